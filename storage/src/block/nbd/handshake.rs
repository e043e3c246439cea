//! The fixed newstyle handshake: greeting, client flags, then options until the client picks an
//! export (EXPORT_NAME or GO), aborts or hangs up. Parsing and encoding are in [`super::codec`].

use super::codec::{
    export_name, export_name_reply, greeting, info_block_size, info_export, message,
    opt_reply_header, parse_client_flags, parse_info_request, parse_option_header, OptionHeader,
    INFO_DESCRIPTION, INFO_NAME, MAX_OPTION_LEN, OPT_ABORT, OPT_EXPORT_NAME, OPT_GO, OPT_INFO,
    OPT_LIST, REP_ACK, REP_ERR_INVALID, REP_ERR_SHUTDOWN, REP_ERR_TOO_BIG, REP_ERR_UNKNOWN,
    REP_ERR_UNSUP, REP_INFO, REP_SERVER,
};
use super::{drain, read_full_or_eof, BlockDevice, ExportProvider, NbdError, OpenError};
use std::io;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, warn};

pub(super) enum Negotiated {
    /// The client aborted or hung up.
    Closed,
    Transmission {
        name: String,
        device: Arc<dyn BlockDevice>,
    },
}

/// What handling one option leads to.
enum Next {
    /// Answered; read the next option.
    Continue,
    Done(Negotiated),
}

pub(super) async fn negotiate<R, W>(
    r: &mut R,
    w: &mut W,
    provider: &dyn ExportProvider,
    peer: &str,
) -> Result<Negotiated, NbdError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    w.write_all(&greeting()).await?;
    w.flush().await?;

    let mut cf = [0u8; 4];
    if !read_full_or_eof(r, &mut cf).await? {
        return Ok(Negotiated::Closed);
    }
    let no_zeroes = parse_client_flags(cf).inspect_err(|e| {
        debug!(peer, error = %e, "nbd: unknown client flags, closing");
    })?;

    loop {
        let mut hdr = [0u8; 16];
        if !read_full_or_eof(r, &mut hdr).await? {
            return Ok(Negotiated::Closed);
        }
        let OptionHeader { opt, len } = parse_option_header(&hdr).inspect_err(|e| {
            warn!(peer, error = %e, "nbd: bad option magic, closing");
        })?;
        if len > MAX_OPTION_LEN {
            refuse_oversized(r, w, opt, len).await?;
            continue;
        }
        let mut data = vec![0u8; len as usize];
        r.read_exact(&mut data).await?;
        match option(w, opt, &data, no_zeroes, provider, peer).await? {
            Next::Continue => w.flush().await?,
            Next::Done(n) => return Ok(n),
        }
    }
}

/// Option data longer than [`MAX_OPTION_LEN`]: drained and answered with ERR_TOO_BIG, except for
/// EXPORT_NAME, which has no error reply and closes the connection.
async fn refuse_oversized<R, W>(r: &mut R, w: &mut W, opt: u32, len: u32) -> Result<(), NbdError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if opt == OPT_EXPORT_NAME {
        return Err(NbdError::ExportRefused {
            name: String::new(),
            reason: format!("option length {len} exceeds {MAX_OPTION_LEN}"),
        });
    }
    drain(r, u64::from(len)).await?;
    let msg = format!("option data of {len} bytes exceeds the limit of {MAX_OPTION_LEN}");
    opt_reply(w, opt, REP_ERR_TOO_BIG, &[msg.as_bytes()]).await?;
    w.flush().await?;
    Ok(())
}

/// Handles one option whose data has been read.
async fn option<W: AsyncWrite + Unpin>(
    w: &mut W,
    opt: u32,
    data: &[u8],
    no_zeroes: bool,
    provider: &dyn ExportProvider,
    peer: &str,
) -> Result<Next, NbdError> {
    match opt {
        OPT_EXPORT_NAME => {
            let (name, device) = open_export_name(data, provider, peer).await?;
            w.write_all(&export_name_reply(device.size(), no_zeroes))
                .await?;
            w.flush().await?;
            Ok(Next::Done(Negotiated::Transmission { name, device }))
        }
        OPT_ABORT => {
            // Data (if any) is ignored, as the spec asks. The client may already be gone.
            let _ = opt_reply(w, opt, REP_ACK, &[]).await;
            let _ = w.flush().await;
            Ok(Next::Done(Negotiated::Closed))
        }
        OPT_LIST => {
            list(w, opt, data, provider, peer).await?;
            Ok(Next::Continue)
        }
        OPT_INFO | OPT_GO => match info_or_go(w, opt, data, provider, peer).await? {
            Some(device) if opt == OPT_GO => {
                w.flush().await?;
                let name = parse_info_request(data)
                    .and_then(|req| export_name(req.name).ok())
                    .unwrap_or_default()
                    .to_owned();
                Ok(Next::Done(Negotiated::Transmission { name, device }))
            }
            _ => Ok(Next::Continue),
        },
        _ => {
            // STARTTLS (NOTLS mode), STRUCTURED_REPLY, LIST/SET_META_CONTEXT,
            // EXTENDED_HEADERS and anything unknown.
            let msg = format!("option {opt} is not supported by this server");
            opt_reply(w, opt, REP_ERR_UNSUP, &[msg.as_bytes()]).await?;
            Ok(Next::Continue)
        }
    }
}

/// NBD_OPT_EXPORT_NAME: it has no error reply, so any refusal closes the connection.
async fn open_export_name(
    data: &[u8],
    provider: &dyn ExportProvider,
    peer: &str,
) -> Result<(String, Arc<dyn BlockDevice>), NbdError> {
    let name = match export_name(data) {
        Ok(n) if !n.is_empty() => n.to_owned(),
        Ok(_) => {
            return Err(NbdError::ExportRefused {
                name: String::new(),
                reason: "no default export".into(),
            })
        }
        Err(reason) => {
            return Err(NbdError::ExportRefused {
                name: String::from_utf8_lossy(data).into_owned(),
                reason: reason.into(),
            })
        }
    };
    match provider.open(&name).await {
        Ok(device) => Ok((name, device)),
        Err(e) => {
            debug!(peer, export = %name, error = %e, "nbd: EXPORT_NAME refused");
            Err(NbdError::ExportRefused {
                name,
                reason: e.to_string(),
            })
        }
    }
}

/// NBD_OPT_LIST: one REP_SERVER per export, then ACK.
async fn list<W: AsyncWrite + Unpin>(
    w: &mut W,
    opt: u32,
    data: &[u8],
    provider: &dyn ExportProvider,
    peer: &str,
) -> io::Result<()> {
    if !data.is_empty() {
        return opt_reply(w, opt, REP_ERR_INVALID, &[b"NBD_OPT_LIST takes no data"]).await;
    }
    match provider.list().await {
        Ok(names) => {
            for name in &names {
                let len = (name.len() as u32).to_be_bytes();
                opt_reply(w, opt, REP_SERVER, &[&len, name.as_bytes()]).await?;
            }
            opt_reply(w, opt, REP_ACK, &[]).await
        }
        Err(e) => {
            warn!(peer, error = %e, "nbd: listing exports failed");
            let msg = format!("cannot list exports now: {e}");
            opt_reply(w, opt, REP_ERR_SHUTDOWN, &[message(&msg)]).await
        }
    }
}

/// success (the caller enters transmission for GO).
async fn info_or_go<W: AsyncWrite + Unpin>(
    w: &mut W,
    opt: u32,
    data: &[u8],
    provider: &dyn ExportProvider,
    peer: &str,
) -> Result<Option<Arc<dyn BlockDevice>>, NbdError> {
    let Some(req) = parse_info_request(data) else {
        opt_reply(
            w,
            opt,
            REP_ERR_INVALID,
            &[b"malformed NBD_OPT_INFO/GO data"],
        )
        .await?;
        return Ok(None);
    };
    let name = match export_name(req.name) {
        Ok(n) => n,
        Err(reason) => {
            opt_reply(w, opt, REP_ERR_INVALID, &[reason.as_bytes()]).await?;
            return Ok(None);
        }
    };
    if name.is_empty() {
        let msg = b"there is no default export; name one as POOL/IMAGE";
        opt_reply(w, opt, REP_ERR_UNKNOWN, &[msg]).await?;
        return Ok(None);
    }
    let device = match provider.open(name).await {
        Ok(d) => d,
        Err(OpenError::Unknown(m)) => {
            debug!(peer, export = name, error = %m, "nbd: unknown export");
            let msg = format!("unknown export {name:?}: {m}");
            opt_reply(w, opt, REP_ERR_UNKNOWN, &[message(&msg)]).await?;
            return Ok(None);
        }
        Err(OpenError::Unavailable(m)) => {
            debug!(peer, export = name, error = %m, "nbd: export unavailable");
            let msg = format!("export {name:?} cannot be served now: {m}");
            opt_reply(w, opt, REP_ERR_SHUTDOWN, &[message(&msg)]).await?;
            return Ok(None);
        }
    };

    opt_reply(w, opt, REP_INFO, &[&info_export(device.size())]).await?;
    // Always sent (the spec allows unrequested info): a client that does not understand it
    // ignores it, and qemu uses it to size its requests.
    opt_reply(w, opt, REP_INFO, &[&info_block_size()]).await?;
    let (mut sent_name, mut sent_desc) = (false, false);
    for chunk in req.infos.chunks_exact(2) {
        match u16::from_be_bytes([chunk[0], chunk[1]]) {
            INFO_NAME if !sent_name => {
                sent_name = true;
                let ty = INFO_NAME.to_be_bytes();
                opt_reply(w, opt, REP_INFO, &[&ty, name.as_bytes()]).await?;
            }
            INFO_DESCRIPTION if !sent_desc => {
                sent_desc = true;
                let ty = INFO_DESCRIPTION.to_be_bytes();
                let desc = format!("Bulwark block image {name}");
                opt_reply(w, opt, REP_INFO, &[&ty, message(&desc)]).await?;
            }
            _ => {} // EXPORT and BLOCK_SIZE already sent; unknown ones are ignored.
        }
    }
    opt_reply(w, opt, REP_ACK, &[]).await?;
    Ok(Some(device))
}

/// Writes one option reply (header and data parts); the caller flushes.
async fn opt_reply<W: AsyncWrite + Unpin>(
    w: &mut W,
    opt: u32,
    reply_type: u32,
    parts: &[&[u8]],
) -> io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let len = u32::try_from(len).map_err(|_| io::Error::other("option reply too long"))?;
    w.write_all(&opt_reply_header(opt, reply_type, len)).await?;
    for p in parts {
        w.write_all(p).await?;
    }
    Ok(())
}
