//! Node identity: an Ed25519 key whose libp2p-style peer ID ("12D3KooW…") names the node everywhere
//! (pin allocations, status maps, logs), as Kubo and IPFS Cluster peer IDs do.

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Serialize, Deserialize)]
pub struct Identity {
    #[serde(rename = "PeerID")]
    pub peer_id: String,
    /// Ed25519 secret key, hex. Kept in the data directory with mode 0600.
    #[serde(rename = "PrivKey")]
    priv_key: String,
}

impl Identity {
    pub fn generate() -> Self {
        let sk = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        Self {
            peer_id: peer_id_of(&sk),
            priv_key: hex::encode(sk.to_bytes()),
        }
    }

    pub fn public_key_b64(&self) -> String {
        // libp2p's protobuf PublicKey{Type=Ed25519, Data=key}, as Kubo shows it in `id`.
        let mut pb = vec![0x08, 0x01, 0x12, 0x20];
        pb.extend_from_slice(self.signing_key().verifying_key().as_bytes());
        multibase::Base::Base64.encode(pb)
    }

    fn signing_key(&self) -> SigningKey {
        let bytes: [u8; 32] = hex::decode(&self.priv_key)
            .ok()
            .and_then(|b| b.try_into().ok())
            .unwrap_or([0; 32]);
        SigningKey::from_bytes(&bytes)
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read identity {}: {e}", path.display()))?;
        let id: Identity = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("identity {} is malformed: {e}", path.display()))?;
        if peer_id_of(&id.signing_key()) != id.peer_id {
            anyhow::bail!(
                "identity {}: PeerID does not match the private key",
                path.display()
            );
        }
        Ok(id)
    }
}

/// libp2p peer ID of an Ed25519 key: identity multihash of the protobuf-encoded public key, base58btc.
fn peer_id_of(sk: &SigningKey) -> String {
    let mut pb = vec![0x08, 0x01, 0x12, 0x20];
    pb.extend_from_slice(sk.verifying_key().as_bytes());
    let mut mh = vec![0x00, pb.len() as u8];
    mh.extend_from_slice(&pb);
    bs58::encode(mh).into_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_ids_look_like_libp2p_ed25519_ids() {
        let id = Identity::generate();
        assert!(id.peer_id.starts_with("12D3KooW"), "{}", id.peer_id);
        assert_eq!(id.peer_id.len(), 52);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("identity.json");
        std::fs::write(&p, serde_json::to_string(&id).unwrap()).unwrap();
        assert_eq!(Identity::load(&p).unwrap().peer_id, id.peer_id);
    }
}
