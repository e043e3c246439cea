//! The NBD protocol codec: wire constants, and pure parsing and encoding of handshake messages,
//! transmission requests and replies. No I/O here: the handshake ([`super::handshake`]) and the
//! transmission phase ([`super::transmission`]) read and write the stream and call these.

use super::{DevError, NbdError};
use bytes::{Buf, BufMut, Bytes};

pub(super) const NBDMAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
pub(super) const IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
pub(super) const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub(super) const REQUEST_MAGIC: u32 = 0x2560_9513;
pub(super) const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

pub(super) const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub(super) const FLAG_NO_ZEROES: u16 = 1 << 1;
pub(super) const CFLAG_FIXED_NEWSTYLE: u32 = 1 << 0;
pub(super) const CFLAG_NO_ZEROES: u32 = 1 << 1;

pub(super) const OPT_EXPORT_NAME: u32 = 1;
pub(super) const OPT_ABORT: u32 = 2;
pub(super) const OPT_LIST: u32 = 3;
pub(super) const OPT_INFO: u32 = 6;
pub(super) const OPT_GO: u32 = 7;

pub(super) const REP_ACK: u32 = 1;
pub(super) const REP_SERVER: u32 = 2;
pub(super) const REP_INFO: u32 = 3;
pub(super) const REP_ERR_UNSUP: u32 = 0x8000_0001;
pub(super) const REP_ERR_INVALID: u32 = 0x8000_0003;
pub(super) const REP_ERR_UNKNOWN: u32 = 0x8000_0006;
pub(super) const REP_ERR_SHUTDOWN: u32 = 0x8000_0007;
pub(super) const REP_ERR_TOO_BIG: u32 = 0x8000_0009;

pub(super) const INFO_EXPORT: u16 = 0;
pub(super) const INFO_NAME: u16 = 1;
pub(super) const INFO_DESCRIPTION: u16 = 2;
pub(super) const INFO_BLOCK_SIZE: u16 = 3;

const TFLAG_HAS_FLAGS: u16 = 1 << 0;
const TFLAG_SEND_FLUSH: u16 = 1 << 2;
const TFLAG_SEND_FUA: u16 = 1 << 3;
const TFLAG_SEND_TRIM: u16 = 1 << 5;
const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Transmission flags sent for every export: HAS_FLAGS, SEND_FLUSH, SEND_FUA, SEND_TRIM,
/// SEND_WRITE_ZEROES (not READ_ONLY, not CAN_MULTI_CONN).
pub const TRANSMISSION_FLAGS: u16 =
    TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA | TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES;

pub(super) const CMD_READ: u16 = 0;
pub(super) const CMD_WRITE: u16 = 1;
pub(super) const CMD_DISC: u16 = 2;
pub(super) const CMD_FLUSH: u16 = 3;
pub(super) const CMD_TRIM: u16 = 4;
pub(super) const CMD_WRITE_ZEROES: u16 = 6;
pub(super) const CMD_FLAG_FUA: u16 = 1 << 0;
pub(super) const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

pub(super) const NBD_EPERM: u32 = 1;
pub(super) const NBD_EIO: u32 = 5;
pub(super) const NBD_EINVAL: u32 = 22;
pub(super) const NBD_ENOSPC: u32 = 28;

/// Advertised minimum block size.
pub const MIN_BLOCK_SIZE: u32 = 1;
/// Advertised preferred block size.
pub const PREFERRED_BLOCK_SIZE: u32 = 4096;
/// Advertised maximum block size: the largest READ/WRITE accepted.
pub const MAX_BLOCK_SIZE: u32 = 32 << 20;
/// Longest option data accepted during the handshake.
pub(super) const MAX_OPTION_LEN: u32 = 64 << 10;
/// The spec's limit for strings (export names, messages).
pub(super) const MAX_STRING_LEN: usize = 4096;

// ---- handshake --------------------------------------------------------------------------------

/// The server's greeting: `NBDMAGIC ‖ IHAVEOPT ‖ handshake flags`.
pub(super) fn greeting() -> [u8; 18] {
    let mut out = [0u8; 18];
    let mut b = &mut out[..];
    b.put_u64(NBDMAGIC);
    b.put_u64(IHAVEOPT);
    b.put_u16(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    out
}

/// The client's flags; `Ok(true)` when it asked for NO_ZEROES. Unknown flags end the connection.
pub(super) fn parse_client_flags(raw: [u8; 4]) -> Result<bool, NbdError> {
    let cflags = u32::from_be_bytes(raw);
    if cflags & !(CFLAG_FIXED_NEWSTYLE | CFLAG_NO_ZEROES) != 0 {
        return Err(NbdError::ClientFlags(cflags));
    }
    Ok(cflags & CFLAG_NO_ZEROES != 0)
}

/// The header of one option the client sends during the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct OptionHeader {
    pub(super) opt: u32,
    /// Length of the option data that follows.
    pub(super) len: u32,
}

/// `IHAVEOPT ‖ option u32 ‖ length u32`; a bad magic ends the connection.
pub(super) fn parse_option_header(raw: &[u8; 16]) -> Result<OptionHeader, NbdError> {
    let mut h = &raw[..];
    let magic = h.get_u64();
    let opt = h.get_u32();
    let len = h.get_u32();
    if magic != IHAVEOPT {
        return Err(NbdError::OptionMagic(magic));
    }
    Ok(OptionHeader { opt, len })
}

/// The parsed data of NBD_OPT_INFO / NBD_OPT_GO.
pub(super) struct InfoRequest<'a> {
    pub(super) name: &'a [u8],
    /// `n` big-endian u16 information requests.
    pub(super) infos: &'a [u8],
}

pub(super) fn parse_info_request(data: &[u8]) -> Option<InfoRequest<'_>> {
    let mut b = data;
    let name_len = usize::try_from(b.try_get_u32().ok()?).ok()?;
    if name_len > b.len().checked_sub(2)? {
        return None;
    }
    let (name, mut rest) = b.split_at(name_len);
    let n = usize::from(rest.try_get_u16().ok()?);
    if rest.len() != n * 2 {
        return None;
    }
    Some(InfoRequest { name, infos: rest })
}

/// Validates an export name (the spec's string rules). The empty name is returned as is.
pub(super) fn export_name(raw: &[u8]) -> Result<&str, &'static str> {
    if raw.len() > MAX_STRING_LEN {
        return Err("export name longer than 4096 bytes");
    }
    let s = std::str::from_utf8(raw).map_err(|_| "export name is not valid UTF-8")?;
    if s.contains('\0') {
        return Err("export name contains NUL");
    }
    Ok(s)
}

/// Truncates a message to the spec's string limit (on a char boundary).
pub(super) fn message(s: &str) -> &[u8] {
    if s.len() <= MAX_STRING_LEN {
        return s.as_bytes();
    }
    let mut end = MAX_STRING_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s.as_bytes()[..end]
}

/// The header of an option reply; `len` bytes of reply data follow it.
pub(super) fn opt_reply_header(opt: u32, reply_type: u32, len: u32) -> [u8; 20] {
    let mut out = [0u8; 20];
    let mut b = &mut out[..];
    b.put_u64(OPT_REPLY_MAGIC);
    b.put_u32(opt);
    b.put_u32(reply_type);
    b.put_u32(len);
    out
}

/// The answer to NBD_OPT_EXPORT_NAME: export size and transmission flags, then 124 zero bytes
/// unless the client asked for NO_ZEROES.
pub(super) fn export_name_reply(size: u64, no_zeroes: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + 124);
    out.put_u64(size);
    out.put_u16(TRANSMISSION_FLAGS);
    if !no_zeroes {
        out.resize(10 + 124, 0);
    }
    out
}

/// NBD_INFO_EXPORT: size and transmission flags.
pub(super) fn info_export(size: u64) -> [u8; 12] {
    let mut out = [0u8; 12];
    let mut b = &mut out[..];
    b.put_u16(INFO_EXPORT);
    b.put_u64(size);
    b.put_u16(TRANSMISSION_FLAGS);
    out
}

/// NBD_INFO_BLOCK_SIZE: the advertised minimum, preferred and maximum block sizes.
pub(super) fn info_block_size() -> [u8; 14] {
    let mut out = [0u8; 14];
    let mut b = &mut out[..];
    b.put_u16(INFO_BLOCK_SIZE);
    b.put_u32(MIN_BLOCK_SIZE);
    b.put_u32(PREFERRED_BLOCK_SIZE);
    b.put_u32(MAX_BLOCK_SIZE);
    out
}

// ---- transmission -----------------------------------------------------------------------------

/// The fixed 28-byte header of a transmission request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RequestHeader {
    pub(super) flags: u16,
    pub(super) cmd: u16,
    pub(super) cookie: u64,
    pub(super) offset: u64,
    pub(super) len: u32,
}

/// `magic u32 ‖ flags u16 ‖ type u16 ‖ cookie u64 ‖ offset u64 ‖ length u32`; a bad magic ends
/// the connection.
pub(super) fn parse_request_header(raw: &[u8; 28]) -> Result<RequestHeader, NbdError> {
    let mut h = &raw[..];
    let magic = h.get_u32();
    let flags = h.get_u16();
    let cmd = h.get_u16();
    let cookie = h.get_u64();
    let offset = h.get_u64();
    let len = h.get_u32();
    if magic != REQUEST_MAGIC {
        return Err(NbdError::RequestMagic(magic));
    }
    Ok(RequestHeader {
        flags,
        cmd,
        cookie,
        offset,
        len,
    })
}

/// What follows a request header on the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Payload {
    None,
    /// WRITE data to read.
    Read(u32),
    /// WRITE data longer than [`MAX_BLOCK_SIZE`]: discarded unread, the request fails.
    Drain(u32),
}

impl RequestHeader {
    pub(super) fn is_disconnect(&self) -> bool {
        self.cmd == CMD_DISC
    }

    /// A command this server implements (the others are answered with EINVAL).
    pub(super) fn is_supported(&self) -> bool {
        matches!(
            self.cmd,
            CMD_READ | CMD_WRITE | CMD_DISC | CMD_FLUSH | CMD_TRIM | CMD_WRITE_ZEROES
        )
    }

    /// The READ or WRITE data this request will hold in flight, for the connection's budget.
    pub(super) fn budget_bytes(&self) -> u32 {
        match self.cmd {
            CMD_READ | CMD_WRITE if self.len <= MAX_BLOCK_SIZE => self.len,
            _ => 0,
        }
    }

    /// The payload that follows this header. Only WRITE carries one; CACHE, BLOCK_STATUS and
    /// unknown commands carry none, so nothing else is consumed.
    pub(super) fn payload(&self) -> Payload {
        match self.cmd {
            CMD_WRITE if self.len > MAX_BLOCK_SIZE => Payload::Drain(self.len),
            CMD_WRITE => Payload::Read(self.len),
            _ => Payload::None,
        }
    }
}

/// One validated request for the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Read { offset: u64, len: u32 },
    Write { offset: u64, data: Bytes, fua: bool },
    WriteZeroes { offset: u64, len: u32, fua: bool },
    Trim { offset: u64, len: u32, fua: bool },
    Flush,
}

impl Op {
    pub(super) fn name(&self) -> &'static str {
        match self {
            Op::Read { .. } => "read",
            Op::Write { .. } => "write",
            Op::WriteZeroes { .. } => "write_zeroes",
            Op::Trim { .. } => "trim",
            Op::Flush => "flush",
        }
    }

    pub(super) fn range(&self) -> (u64, u64) {
        match self {
            Op::Read { offset, len }
            | Op::WriteZeroes { offset, len, .. }
            | Op::Trim { offset, len, .. } => (*offset, u64::from(*len)),
            Op::Write { offset, data, .. } => (*offset, data.len() as u64),
            Op::Flush => (0, 0),
        }
    }
}

/// A decoded request: work for the device, or an answer known without it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Decoded {
    Run(Op),
    /// Reply at once with this errno (0: success, for a zero-length request).
    Answer(u32),
}

/// Validates a request (not DISC) against the spec and an export of `size` bytes. `data`: the
/// WRITE payload read after the header (`None` if there was none or it was drained).
pub(super) fn decode_request(h: &RequestHeader, data: Option<Bytes>, size: u64) -> Decoded {
    let RequestHeader {
        flags,
        cmd,
        offset,
        len,
        ..
    } = *h;
    let fua = flags & CMD_FLAG_FUA != 0;
    // `checked` runs the common checks in the spec's order: flags, zero length, range.
    let checked = |allowed: u16, past_end: u32, op: Op| {
        if flags & !allowed != 0 {
            Decoded::Answer(NBD_EINVAL)
        } else if len == 0 {
            Decoded::Answer(0)
        } else if !in_range(offset, len, size) {
            Decoded::Answer(past_end)
        } else {
            Decoded::Run(op)
        }
    };
    match cmd {
        CMD_WRITE => match data {
            Some(data) if len <= MAX_BLOCK_SIZE => {
                checked(CMD_FLAG_FUA, NBD_ENOSPC, Op::Write { offset, data, fua })
            }
            _ => Decoded::Answer(NBD_EINVAL),
        },
        CMD_READ if len > MAX_BLOCK_SIZE => Decoded::Answer(NBD_EINVAL),
        CMD_READ => checked(CMD_FLAG_FUA, NBD_EINVAL, Op::Read { offset, len }),
        CMD_WRITE_ZEROES => checked(
            CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
            NBD_ENOSPC,
            Op::WriteZeroes { offset, len, fua },
        ),
        CMD_TRIM => checked(CMD_FLAG_FUA, NBD_EINVAL, Op::Trim { offset, len, fua }),
        CMD_FLUSH if flags & !CMD_FLAG_FUA != 0 => Decoded::Answer(NBD_EINVAL),
        CMD_FLUSH => Decoded::Run(Op::Flush),
        // CACHE, BLOCK_STATUS (needs structured replies) and unknown commands.
        _ => Decoded::Answer(NBD_EINVAL),
    }
}

/// The NBD errno for a device error.
pub(super) fn errno(e: &DevError) -> u32 {
    match e {
        DevError::Io(_) => NBD_EIO,
        DevError::Invalid(_) => NBD_EINVAL,
        DevError::NoSpace(_) => NBD_ENOSPC,
        DevError::ReadOnly(_) => NBD_EPERM,
    }
}

/// `offset..offset+len` lies inside an export of `size` bytes.
fn in_range(offset: u64, len: u32, size: u64) -> bool {
    offset
        .checked_add(u64::from(len))
        .is_some_and(|end| end <= size)
}

/// The header of a simple reply; a successful READ's data follows it.
pub(super) fn simple_reply_header(error: u32, cookie: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut b = &mut out[..];
    b.put_u32(SIMPLE_REPLY_MAGIC);
    b.put_u32(error);
    b.put_u64(cookie);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(flags: u16, cmd: u16, offset: u64, len: u32) -> RequestHeader {
        RequestHeader {
            flags,
            cmd,
            cookie: 7,
            offset,
            len,
        }
    }

    #[test]
    fn greeting_and_client_flags() {
        let g = greeting();
        assert_eq!(&g[..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(u16::from_be_bytes([g[16], g[17]]), 3);
        assert!(!parse_client_flags(1u32.to_be_bytes()).unwrap());
        assert!(parse_client_flags(3u32.to_be_bytes()).unwrap());
        assert!(matches!(
            parse_client_flags(4u32.to_be_bytes()),
            Err(NbdError::ClientFlags(4))
        ));
    }

    #[test]
    fn option_header_roundtrip_and_bad_magic() {
        let mut raw = [0u8; 16];
        let mut b = &mut raw[..];
        b.put_u64(IHAVEOPT);
        b.put_u32(OPT_GO);
        b.put_u32(42);
        assert_eq!(
            parse_option_header(&raw).unwrap(),
            OptionHeader {
                opt: OPT_GO,
                len: 42
            }
        );
        raw[0] ^= 1;
        assert!(matches!(
            parse_option_header(&raw),
            Err(NbdError::OptionMagic(_))
        ));
    }

    #[test]
    fn info_requests_and_export_names() {
        let mut data = Vec::new();
        data.put_u32(5);
        data.extend_from_slice(b"rbd/a");
        data.put_u16(2);
        data.put_u16(INFO_NAME);
        data.put_u16(INFO_DESCRIPTION);
        let req = parse_info_request(&data).unwrap();
        assert_eq!(req.name, b"rbd/a");
        assert_eq!(req.infos.len(), 4);
        assert!(parse_info_request(&data[..data.len() - 1]).is_none());
        assert!(parse_info_request(&[0, 0, 0, 9, 0, 0]).is_none());
        assert_eq!(export_name(b"rbd/a"), Ok("rbd/a"));
        assert_eq!(export_name(b""), Ok(""));
        assert!(export_name(b"a\0b").is_err());
        assert!(export_name(&[0xff]).is_err());
        assert!(export_name(&[b'a'; MAX_STRING_LEN + 1]).is_err());
    }

    #[test]
    fn messages_are_cut_on_char_boundaries() {
        assert_eq!(message("short"), b"short");
        let long = "é".repeat(MAX_STRING_LEN);
        let cut = message(&long);
        assert!(cut.len() <= MAX_STRING_LEN);
        assert!(std::str::from_utf8(cut).is_ok());
    }

    #[test]
    fn handshake_replies_encode() {
        let h = opt_reply_header(OPT_LIST, REP_ACK, 9);
        assert_eq!(&h[..8], &OPT_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&h[8..12], &OPT_LIST.to_be_bytes());
        assert_eq!(&h[12..16], &REP_ACK.to_be_bytes());
        assert_eq!(&h[16..], &9u32.to_be_bytes());
        assert_eq!(export_name_reply(1 << 20, true).len(), 10);
        let r = export_name_reply(1 << 20, false);
        assert_eq!(r.len(), 134);
        assert_eq!(&r[..8], &(1u64 << 20).to_be_bytes());
        assert_eq!(&r[8..10], &TRANSMISSION_FLAGS.to_be_bytes());
        assert!(r[10..].iter().all(|&b| b == 0));
        let e = info_export(4096);
        assert_eq!(&e[..2], &INFO_EXPORT.to_be_bytes());
        let bs = info_block_size();
        assert_eq!(&bs[10..], &MAX_BLOCK_SIZE.to_be_bytes());
        let s = simple_reply_header(NBD_EIO, 99);
        assert_eq!(&s[..4], &SIMPLE_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&s[4..8], &NBD_EIO.to_be_bytes());
        assert_eq!(&s[8..], &99u64.to_be_bytes());
    }

    #[test]
    fn request_header_parses_and_checks_magic() {
        let mut raw = [0u8; 28];
        let mut b = &mut raw[..];
        b.put_u32(REQUEST_MAGIC);
        b.put_u16(CMD_FLAG_FUA);
        b.put_u16(CMD_WRITE);
        b.put_u64(5);
        b.put_u64(4096);
        b.put_u32(512);
        let h = parse_request_header(&raw).unwrap();
        assert_eq!(
            h,
            RequestHeader {
                flags: CMD_FLAG_FUA,
                cmd: CMD_WRITE,
                cookie: 5,
                offset: 4096,
                len: 512
            }
        );
        assert_eq!(h.payload(), Payload::Read(512));
        assert_eq!(h.budget_bytes(), 512);
        raw[3] ^= 1;
        assert!(matches!(
            parse_request_header(&raw),
            Err(NbdError::RequestMagic(_))
        ));
        let big = header(0, CMD_WRITE, 0, MAX_BLOCK_SIZE + 1);
        assert_eq!(big.payload(), Payload::Drain(MAX_BLOCK_SIZE + 1));
        assert_eq!(big.budget_bytes(), 0);
        assert_eq!(header(0, CMD_TRIM, 0, 1 << 30).payload(), Payload::None);
        assert!(header(0, CMD_DISC, 0, 0).is_disconnect());
        assert!(!header(0, 5, 0, 0).is_supported());
    }

    #[test]
    fn requests_are_validated_like_the_spec_says() {
        let size = 1 << 20;
        let run = |d: Decoded| matches!(d, Decoded::Run(_));
        let data = Some(Bytes::from_static(&[1; 512]));
        // WRITE: flags, zero length, past the end (ENOSPC), oversized (EINVAL).
        assert!(run(decode_request(
            &header(CMD_FLAG_FUA, CMD_WRITE, 0, 512),
            data.clone(),
            size
        )));
        assert_eq!(
            decode_request(
                &header(CMD_FLAG_NO_HOLE, CMD_WRITE, 0, 512),
                data.clone(),
                size
            ),
            Decoded::Answer(NBD_EINVAL)
        );
        assert_eq!(
            decode_request(&header(0, CMD_WRITE, 0, 0), Some(Bytes::new()), size),
            Decoded::Answer(0)
        );
        assert_eq!(
            decode_request(&header(0, CMD_WRITE, size, 512), data, size),
            Decoded::Answer(NBD_ENOSPC)
        );
        assert_eq!(
            decode_request(&header(0, CMD_WRITE, 0, MAX_BLOCK_SIZE + 1), None, size),
            Decoded::Answer(NBD_EINVAL)
        );
        // READ: oversized and past the end are EINVAL.
        assert_eq!(
            decode_request(&header(0, CMD_READ, 0, 512), None, size),
            Decoded::Run(Op::Read {
                offset: 0,
                len: 512
            })
        );
        assert_eq!(
            decode_request(&header(0, CMD_READ, u64::MAX, 512), None, size),
            Decoded::Answer(NBD_EINVAL)
        );
        assert_eq!(
            decode_request(&header(0, CMD_READ, 0, MAX_BLOCK_SIZE + 1), None, u64::MAX),
            Decoded::Answer(NBD_EINVAL)
        );
        // WRITE_ZEROES accepts NO_HOLE and is not capped; past the end is ENOSPC.
        assert!(run(decode_request(
            &header(CMD_FLAG_NO_HOLE, CMD_WRITE_ZEROES, 0, MAX_BLOCK_SIZE + 1),
            None,
            u64::MAX
        )));
        assert_eq!(
            decode_request(&header(0, CMD_WRITE_ZEROES, size, 1), None, size),
            Decoded::Answer(NBD_ENOSPC)
        );
        // TRIM past the end is EINVAL; FLUSH takes only FUA.
        assert_eq!(
            decode_request(&header(0, CMD_TRIM, size, 1), None, size),
            Decoded::Answer(NBD_EINVAL)
        );
        assert_eq!(
            decode_request(&header(CMD_FLAG_FUA, CMD_FLUSH, 0, 0), None, size),
            Decoded::Run(Op::Flush)
        );
        assert_eq!(
            decode_request(&header(CMD_FLAG_NO_HOLE, CMD_FLUSH, 0, 0), None, size),
            Decoded::Answer(NBD_EINVAL)
        );
        // Unknown commands.
        assert_eq!(
            decode_request(&header(0, 5, 0, 512), None, size),
            Decoded::Answer(NBD_EINVAL)
        );
    }
}
