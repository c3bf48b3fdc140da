//! Reading and writing control frames on a byte stream, with a length limit checked
//! before anything is allocated.

use crate::wire::control::Message;
use crate::{Error, Result};
use std::io::{ErrorKind, Read, Write};

/// Writes one message.
pub fn write_message(w: &mut impl Write, msg: &Message) -> Result<usize> {
    let buf = msg.to_vec();
    w.write_all(&buf)
        .map_err(|e| Error::io("writing control frame", e))?;
    Ok(buf.len())
}

/// Reads one message of at most `max_len` bytes. Returns `Ok(None)` on a clean end of
/// stream before a frame starts, and the frame's size on the wire with the message.
pub fn read_message(r: &mut impl Read, max_len: usize) -> Result<Option<(Message, usize)>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(Error::io("reading control frame", e)),
    }
    let n = u32::from_be_bytes(len) as usize;
    if n == 0 || n > max_len {
        return Err(Error::Protocol(format!(
            "control frame of {n} bytes (limit {max_len})"
        )));
    }
    let mut body = Vec::new();
    r.by_ref()
        .take(n as u64)
        .read_to_end(&mut body)
        .map_err(|e| Error::io("reading control frame", e))?;
    if body.len() != n {
        return Err(Error::Protocol(format!(
            "control frame truncated: {} of {n} bytes",
            body.len()
        )));
    }
    let msg = Message::parse(&body)?;
    // The length field (4 bytes) plus `n` bytes of type and body.
    Ok(Some((msg, n + 4)))
}
