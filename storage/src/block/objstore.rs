//! This node's object replicas.
