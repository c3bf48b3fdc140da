//! Packet and message formats: encode and parse, no I/O.
//!
//! Every integer is big-endian (network byte order). Every length read from the wire is
//! checked against the remaining buffer and a configured maximum before anything is
//! allocated, so a parser never panics and never allocates more than its input justifies.
//! Field-by-field tables live in `docs/PROTOCOL.md`.

pub mod control;
pub mod packet;
pub mod update;

use std::fmt;

/// Why a buffer could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The buffer ended before the field.
    Truncated(&'static str),
    /// A length or count exceeds its maximum.
    TooLong(&'static str, u64),
    /// A field holds a value this version does not know.
    Invalid(&'static str, u64),
    /// Bytes left over after the message.
    Trailing(usize),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated(field) => write!(f, "truncated at {field}"),
            WireError::TooLong(field, n) => write!(f, "{field} too long ({n})"),
            WireError::Invalid(field, v) => write!(f, "invalid {field} ({v})"),
            WireError::Trailing(n) => write!(f, "{n} trailing bytes"),
        }
    }
}

impl std::error::Error for WireError {}

impl From<WireError> for crate::Error {
    fn from(e: WireError) -> crate::Error {
        crate::Error::Protocol(e.to_string())
    }
}

/// A cursor over a byte slice whose reads fail instead of panicking.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated(field));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, field)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// A length-prefixed (u32) byte string of at most `max` bytes.
    pub(crate) fn blob32(
        &mut self,
        max: usize,
        field: &'static str,
    ) -> Result<&'a [u8], WireError> {
        let n = self.u32(field)? as usize;
        if n > max {
            return Err(WireError::TooLong(field, n as u64));
        }
        self.bytes(n, field)
    }

    /// A length-prefixed (u16) UTF-8 string.
    pub(crate) fn str16(&mut self, field: &'static str) -> Result<&'a str, WireError> {
        let n = self.u16(field)? as usize;
        let b = self.bytes(n, field)?;
        std::str::from_utf8(b).map_err(|_| WireError::Invalid(field, 0))
    }

    /// A length-prefixed (u8) UTF-8 string.
    pub(crate) fn str8(&mut self, field: &'static str) -> Result<&'a str, WireError> {
        let n = self.u8(field)? as usize;
        let b = self.bytes(n, field)?;
        std::str::from_utf8(b).map_err(|_| WireError::Invalid(field, 0))
    }

    pub(crate) fn finish(self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing(self.buf.len()))
        }
    }
}

/// Appends big-endian fields to a `Vec<u8>`.
pub(crate) trait Put {
    fn put_u8(&mut self, v: u8);
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_u64(&mut self, v: u64);
    fn put_blob32(&mut self, b: &[u8]);
    fn put_str16(&mut self, s: &str);
    fn put_str8(&mut self, s: &str);
}

impl Put for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_blob32(&mut self, b: &[u8]) {
        debug_assert!(b.len() <= u32::MAX as usize);
        self.put_u32(b.len() as u32);
        self.extend_from_slice(b);
    }
    fn put_str16(&mut self, s: &str) {
        // Free text (reasons, messages) longer than the field is cut at a character
        // boundary, so the encoding stays valid UTF-8; names are validated by callers.
        let b = truncate_utf8(s, u16::MAX as usize).as_bytes();
        self.put_u16(b.len() as u16);
        self.extend_from_slice(b);
    }
    fn put_str8(&mut self, s: &str) {
        let b = truncate_utf8(s, u8::MAX as usize).as_bytes();
        self.put_u8(b.len() as u8);
        self.extend_from_slice(b);
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
