//! Every example plan in canary/plans/ validates.
use canary::plan::Plan;

#[test]
fn every_example_plan_validates() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("plans");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let plan = Plan::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(plan.alpha_per_test() > 0.0 && plan.alpha_per_test() <= plan.test.alpha);
            n += 1;
        }
    }
    assert!(n >= 3, "found {n} plans in {}", dir.display());
}
