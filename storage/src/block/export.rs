//! The block service as NBD exports: `POOL/IMAGE`, served by any node.

use super::nbd::{BlockDevice, DevError, DevResult, ExportProvider, OpenError};
use super::service::{BlockError, BlockService};
use bytes::Bytes;
use futures::future::BoxFuture;
use std::sync::Arc;

pub struct Exports(pub Arc<BlockService>);

impl ExportProvider for Exports {
    fn list(&self) -> BoxFuture<'_, Result<Vec<String>, String>> {
        Box::pin(async move {
            Ok(self
                .0
                .meta()
                .images(None)
                .iter()
                .map(|i| i.spec())
                .collect())
        })
    }

    fn open(&self, name: &str) -> BoxFuture<'_, Result<Arc<dyn BlockDevice>, OpenError>> {
        let name = name.to_string();
        Box::pin(async move {
            let (pool, img) = self.0.image_spec(&name).map_err(|e| match e {
                BlockError::NotFound(m) | BlockError::Invalid(m) => OpenError::Unknown(m),
                e => OpenError::Unavailable(e.to_string()),
            })?;
            Ok(Arc::new(Device {
                svc: self.0.clone(),
                pool: pool.name,
                image: img.name,
            }) as Arc<dyn BlockDevice>)
        })
    }
}

/// One open image. Pool and image records are looked up per I/O, so a resize is seen at once and
/// a removed image fails cleanly.
struct Device {
    svc: Arc<BlockService>,
    pool: String,
    image: String,
}

fn dev_err(e: BlockError) -> DevError {
    match e {
        BlockError::Invalid(m) | BlockError::OutOfRange(m) => DevError::Invalid(m),
        BlockError::Full(m) => DevError::NoSpace(m),
        e => DevError::Io(e.to_string()),
    }
}

impl Device {
    fn lookup(&self) -> DevResult<(super::meta::Pool, super::meta::Image)> {
        self.svc.image(&self.pool, &self.image).map_err(dev_err)
    }
}

impl BlockDevice for Device {
    fn size(&self) -> u64 {
        self.svc
            .image(&self.pool, &self.image)
            .map(|(_, i)| i.size)
            .unwrap_or(0)
    }

    fn read(&self, offset: u64, len: u32) -> BoxFuture<'_, DevResult<Bytes>> {
        Box::pin(async move {
            let (p, i) = self.lookup()?;
            self.svc
                .io_read(&p, &i, offset, len as u64)
                .await
                .map_err(dev_err)
        })
    }

    fn write(&self, offset: u64, data: Bytes, _fua: bool) -> BoxFuture<'_, DevResult<()>> {
        Box::pin(async move {
            let (p, i) = self.lookup()?;
            self.svc
                .io_write(&p, &i, offset, data)
                .await
                .map_err(dev_err)
        })
    }

    fn write_zeroes(&self, offset: u64, len: u32, _fua: bool) -> BoxFuture<'_, DevResult<()>> {
        Box::pin(async move {
            let (p, i) = self.lookup()?;
            self.svc
                .io_zero(&p, &i, offset, len as u64)
                .await
                .map_err(dev_err)
        })
    }

    fn trim(&self, offset: u64, len: u32, _fua: bool) -> BoxFuture<'_, DevResult<()>> {
        Box::pin(async move {
            let (p, i) = self.lookup()?;
            self.svc
                .io_trim(&p, &i, offset, len as u64)
                .await
                .map_err(dev_err)
        })
    }

    /// Every acknowledged write is already durable on `min_size` replicas: nothing to flush.
    fn flush(&self) -> BoxFuture<'_, DevResult<()>> {
        Box::pin(async { Ok(()) })
    }
}
