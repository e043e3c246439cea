//! CID helpers, path parsing and option resolution.

use super::*;

const HELLO_V0: &str = "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o";
const HELLO_RAW: &str = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4";

fn hello() -> Cid {
    HELLO_V0.parse().unwrap()
}

#[test]
fn parses_cids_and_ipfs_paths() {
    for s in [
        HELLO_V0.to_string(),
        format!("  {HELLO_V0}\n"),
        format!("/ipfs/{HELLO_V0}"),
        format!("/ipfs/{HELLO_V0}/"),
    ] {
        assert_eq!(parse_cid_path(&s).unwrap(), hello(), "{s:?}");
    }
    let raw: Cid = HELLO_RAW.parse().unwrap();
    assert_eq!(parse_cid_path(&format!("/ipfs/{HELLO_RAW}")).unwrap(), raw);
    // Any multibase is fine for v1.
    let b58 = raw.to_string_of_base(multibase::Base::Base58Btc).unwrap();
    assert_eq!(parse_cid_path(&b58).unwrap(), raw);
    let upper = raw.to_string_of_base(multibase::Base::Base32Upper).unwrap();
    assert_eq!(parse_cid_path(&upper).unwrap(), raw);
}

#[test]
fn rejects_bad_cids_like_kubo() {
    let err = parse_cid_path("xyz").unwrap_err();
    assert!(matches!(err, UnixfsError::InvalidCid(_)));
    assert!(
        err.to_string()
            .starts_with("invalid path \"xyz\": invalid cid: "),
        "{err}"
    );
    let mut trailing = cid_for(b"x", 1, RAW).unwrap().to_bytes();
    trailing.push(0);
    let trailing = multibase::encode(multibase::Base::Base32Lower, trailing);
    for s in [
        "",
        "   ",
        "/ipfs/",
        "/ipfs",
        "/ipfs//",
        "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5",
        "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5O",
        "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei",
        "/ipfs/xyz/readme",
        "ipfs/QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o",
        trailing.as_str(),
    ] {
        match parse_cid_path(s) {
            Err(UnixfsError::InvalidCid(msg)) => assert!(msg.starts_with("invalid path")),
            other => panic!("{s:?}: {other:?}"),
        }
    }
}

#[test]
fn sub_paths_and_other_namespaces_are_unsupported() {
    for s in [
        format!("/ipfs/{HELLO_V0}/readme"),
        format!("/ipfs/{HELLO_V0}/a/b"),
        format!("/ipns/{HELLO_V0}"),
        "/ipns/example.com".to_string(),
    ] {
        assert!(
            matches!(parse_cid_path(&s), Err(UnixfsError::PathUnsupported(_))),
            "{s}"
        );
    }
}

#[test]
fn cid_for_versions_and_codecs() {
    assert_eq!(
        cid_for(b"hello world\n", 1, RAW).unwrap().to_string(),
        HELLO_RAW
    );
    let empty_file = [0x0a, 0x04, 0x08, 0x02, 0x18, 0x00];
    assert_eq!(
        cid_for(&empty_file, 0, DAG_PB).unwrap().to_string(),
        "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"
    );
    assert!(matches!(
        cid_for(b"", 0, RAW),
        Err(UnixfsError::BadOptions(_))
    ));
    assert!(matches!(
        cid_for(b"", 2, DAG_PB),
        Err(UnixfsError::BadOptions(_))
    ));
    assert!(cid_for(b"", 1, DAG_PB)
        .unwrap()
        .to_string()
        .starts_with("bafy"));
}

#[test]
fn verify_block_checks_hashes() {
    let cid: Cid = HELLO_RAW.parse().unwrap();
    verify_block(&cid, b"hello world\n").unwrap();
    match verify_block(&cid, b"hello world!") {
        Err(UnixfsError::HashMismatch { expected, actual }) => {
            assert_eq!(*expected, cid);
            assert_eq!(*actual, cid_for(b"hello world!", 1, RAW).unwrap());
        }
        other => panic!("{other:?}"),
    }
    let id = Cid::new_v1(
        RAW,
        cid::multihash::Multihash::wrap(IDENTITY, b"inline").unwrap(),
    );
    verify_block(&id, b"inline").unwrap();
    assert!(matches!(
        verify_block(&id, b"other"),
        Err(UnixfsError::HashMismatch { .. })
    ));
    let blake3 = Cid::new_v1(
        RAW,
        cid::multihash::Multihash::wrap(0x1e, &[0; 32]).unwrap(),
    );
    assert!(matches!(
        verify_block(&blake3, b""),
        Err(UnixfsError::UnsupportedHash(0x1e))
    ));
    let truncated = Cid::new_v1(
        RAW,
        cid::multihash::Multihash::wrap(SHA2_256, &[0; 16]).unwrap(),
    );
    assert!(verify_block(&truncated, b"").is_err());
}

#[test]
fn kubo_option_resolution() {
    let d = AddOptions::default();
    assert_eq!(
        (d.cid_version, d.raw_leaves, d.chunk_size, d.max_links),
        (0, false, 262_144, 174)
    );
    assert_eq!(AddOptions::kubo(0, None).unwrap(), d);
    assert!(AddOptions::kubo(1, None).unwrap().raw_leaves);
    assert!(!AddOptions::kubo(1, Some(false)).unwrap().raw_leaves);
    assert!(AddOptions::kubo(0, Some(true)).unwrap().raw_leaves);
    assert!(matches!(
        AddOptions::kubo(2, None),
        Err(UnixfsError::BadOptions(_))
    ));
    assert!(d.validate().is_ok());
    assert!(opts(0, false, 0, 174).validate().is_err());
    assert!(opts(0, false, 1, 1).validate().is_err());
}
