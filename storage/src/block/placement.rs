//! Placement: object → placement group → ordered acting set.
