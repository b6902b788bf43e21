//! rstmdb's wire framing: `binary_json` frames (RCPX) and `jsonl` lines.
//!
//! A frame is an 18-byte big-endian header — magic `RCPX`, u16 version 1,
//! u16 flags, u16 header-extension length, u32 payload length, u32 CRC32C of
//! the payload — then the extension bytes, then the UTF-8 JSON payload.
//! Decoding is incremental over a read buffer. Its errors say whether the
//! framing survived: a bad CRC or an oversized-but-declared payload leaves
//! the stream aligned (the frame is skipped, the request answered
//! BAD_REQUEST, the connection kept), a bad magic or version does not (the
//! connection is answered once and closed).

use bytes::{Buf, BufMut, BytesMut};

pub const MAGIC: &[u8; 4] = b"RCPX";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 18;

/// Flag bits.
pub const FLAG_CRC: u16 = 0x0001;
pub const FLAG_COMPRESSED: u16 = 0x0002;
pub const FLAG_STREAM: u16 = 0x0004;
pub const FLAG_END_OF_STREAM: u16 = 0x0008;
const KNOWN_FLAGS: u16 = FLAG_CRC | FLAG_COMPRESSED | FLAG_STREAM | FLAG_END_OF_STREAM;

/// How the two sides frame messages, as negotiated by HELLO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireMode {
    BinaryJson,
    Jsonl,
}

impl WireMode {
    pub fn name(self) -> &'static str {
        match self {
            WireMode::BinaryJson => "binary_json",
            WireMode::Jsonl => "jsonl",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "binary_json" => Some(WireMode::BinaryJson),
            "jsonl" => Some(WireMode::Jsonl),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The stream is not rstmdb framing (or lost its alignment): answer
    /// once and close.
    #[error("bad frame magic {0:02x?}: expected RCPX")]
    BadMagic([u8; 4]),
    #[error("unsupported frame version {0} (this server speaks 1)")]
    BadVersion(u16),
    /// The header announces more than the limit: the stream is aligned,
    /// but the payload is not read; the connection is closed after the
    /// answer, since skipping it would mean reading it.
    #[error("frame payload of {len} bytes is over the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    /// The frame was read whole; its content is refused and the
    /// connection goes on.
    #[error("frame CRC32C mismatch: header says {expected:08x}, payload has {actual:08x}")]
    BadCrc { expected: u32, actual: u32 },
    #[error("unknown frame flags {0:#06x}")]
    BadFlags(u16),
    #[error("compressed frames are not supported")]
    Compressed,
    #[error("frame payload is not UTF-8")]
    NotUtf8,
}

impl FrameError {
    /// Whether the connection can go on reading frames after this.
    pub fn keeps_alignment(&self) -> bool {
        matches!(
            self,
            FrameError::BadCrc { .. }
                | FrameError::BadFlags(_)
                | FrameError::Compressed
                | FrameError::NotUtf8
        )
    }
}

/// Takes one whole frame's payload off `buf`, if `buf` holds one.
/// On an error that keeps alignment the frame has been consumed.
pub fn decode_frame(buf: &mut BytesMut, max: usize) -> Result<Option<String>, FrameError> {
    if buf.len() < HEADER_LEN {
        // A wrong magic is reported as soon as its bytes are here, so a
        // client speaking something else gets an answer, not a stall.
        let n = buf.len().min(4);
        if buf[..n] != MAGIC[..n] {
            let mut m = [0u8; 4];
            m[..n].copy_from_slice(&buf[..n]);
            return Err(FrameError::BadMagic(m));
        }
        return Ok(None);
    }
    let h = &buf[..HEADER_LEN];
    if &h[..4] != MAGIC {
        return Err(FrameError::BadMagic(h[..4].try_into().expect("4 bytes")));
    }
    let version = u16::from_be_bytes([h[4], h[5]]);
    if version != VERSION {
        return Err(FrameError::BadVersion(version));
    }
    let flags = u16::from_be_bytes([h[6], h[7]]);
    let ext = u16::from_be_bytes([h[8], h[9]]) as usize;
    let len = u32::from_be_bytes([h[10], h[11], h[12], h[13]]) as usize;
    let crc = u32::from_be_bytes([h[14], h[15], h[16], h[17]]);
    if len > max || ext > max {
        return Err(FrameError::TooLarge { len, max });
    }
    if buf.len() < HEADER_LEN + ext + len {
        return Ok(None);
    }
    buf.advance(HEADER_LEN + ext);
    let payload = buf.split_to(len);
    if flags & !KNOWN_FLAGS != 0 {
        return Err(FrameError::BadFlags(flags));
    }
    if flags & FLAG_COMPRESSED != 0 {
        return Err(FrameError::Compressed);
    }
    if flags & FLAG_CRC != 0 {
        let actual = crc32c::crc32c(&payload);
        if actual != crc {
            return Err(FrameError::BadCrc {
                expected: crc,
                actual,
            });
        }
    }
    String::from_utf8(payload.to_vec())
        .map(Some)
        .map_err(|_| FrameError::NotUtf8)
}

/// Appends one frame carrying `payload`, always with its CRC.
pub fn encode_frame(out: &mut BytesMut, payload: &[u8]) {
    out.reserve(HEADER_LEN + payload.len());
    out.put_slice(MAGIC);
    out.put_u16(VERSION);
    out.put_u16(FLAG_CRC);
    out.put_u16(0);
    out.put_u32(payload.len() as u32);
    out.put_u32(crc32c::crc32c(payload));
    out.put_slice(payload);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LineError {
    #[error("line of more than {max} bytes")]
    TooLong { max: usize },
    #[error("line is not UTF-8")]
    NotUtf8,
}

/// Takes one `jsonl` line (without its newline) off `buf`, if whole. Blank
/// lines are skipped. A line over the limit is an error that does not keep
/// alignment (its end was not found).
pub fn decode_line(buf: &mut BytesMut, max: usize) -> Result<Option<String>, LineError> {
    loop {
        let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
            if buf.len() > max {
                return Err(LineError::TooLong { max });
            }
            return Ok(None);
        };
        if nl > max {
            return Err(LineError::TooLong { max });
        }
        let line = buf.split_to(nl + 1);
        let text = line[..nl].strip_suffix(b"\r").unwrap_or(&line[..nl]);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        return String::from_utf8(text.to_vec())
            .map(Some)
            .map_err(|_| LineError::NotUtf8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_roundtrip_and_decode_incrementally() {
        let mut wire = BytesMut::new();
        encode_frame(&mut wire, br#"{"op":"PING"}"#);
        encode_frame(&mut wire, br#"{"op":"INFO"}"#);
        assert_eq!(&wire[..4], b"RCPX");
        assert_eq!(&wire[6..8], &[0, 1], "CRC flag set");
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire.iter() {
            buf.put_u8(*b);
            while let Some(p) = decode_frame(&mut buf, 1 << 20).unwrap() {
                got.push(p);
            }
        }
        assert_eq!(got, [r#"{"op":"PING"}"#, r#"{"op":"INFO"}"#]);
        assert!(buf.is_empty());
    }

    #[test]
    fn a_bad_crc_skips_the_frame_and_keeps_the_stream_aligned() {
        let mut buf = BytesMut::new();
        encode_frame(&mut buf, b"{}");
        let last = buf.len() - 1;
        buf[last] ^= 1;
        encode_frame(&mut buf, br#"{"ok":1}"#);
        let e = decode_frame(&mut buf, 1024).unwrap_err();
        assert!(matches!(e, FrameError::BadCrc { .. }) && e.keeps_alignment());
        assert_eq!(
            decode_frame(&mut buf, 1024).unwrap().as_deref(),
            Some(r#"{"ok":1}"#)
        );
    }

    #[test]
    fn limits_and_garbage_are_refused() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert!(matches!(
            decode_frame(&mut buf, 1024),
            Err(FrameError::BadMagic(_))
        ));
        let mut buf = BytesMut::from(&b"RX"[..]);
        assert!(matches!(
            decode_frame(&mut buf, 1024),
            Err(FrameError::BadMagic(_))
        ));
        let mut big = BytesMut::new();
        encode_frame(&mut big, &[b' '; 100]);
        assert_eq!(
            decode_frame(&mut big, 99),
            Err(FrameError::TooLarge { len: 100, max: 99 })
        );
        let mut v2 = BytesMut::new();
        encode_frame(&mut v2, b"{}");
        v2[5] = 2;
        assert_eq!(decode_frame(&mut v2, 1024), Err(FrameError::BadVersion(2)));
    }

    #[test]
    fn lines() {
        let mut buf = BytesMut::from(&b"\n{\"a\":1}\r\n{\"b\""[..]);
        assert_eq!(
            decode_line(&mut buf, 64).unwrap().as_deref(),
            Some(r#"{"a":1}"#)
        );
        assert_eq!(decode_line(&mut buf, 64).unwrap(), None);
        buf.put_slice(b":2}\n");
        assert_eq!(
            decode_line(&mut buf, 64).unwrap().as_deref(),
            Some(r#"{"b":2}"#)
        );
        let mut long = BytesMut::from(&[b'x'; 70][..]);
        assert_eq!(
            decode_line(&mut long, 64),
            Err(LineError::TooLong { max: 64 })
        );
    }
}
