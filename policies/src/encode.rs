//! The canonical byte encoding shared by policy hashes and approval digests.
//!
//! Every value is written with a fixed width (integers big-endian) or a length prefix (byte
//! strings: `u64` length, then the bytes; lists: `u64` count, then the items), so no two distinct
//! values share an encoding.

/// Appends canonical encodings to a byte buffer.
#[derive(Debug, Default)]
pub(crate) struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub(crate) fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }

    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn i64(&mut self, v: i64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A length (or count) prefix.
    pub(crate) fn len(&mut self, n: usize) -> &mut Self {
        self.u64(n as u64)
    }

    /// Length-prefixed bytes.
    pub(crate) fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.len(b.len());
        self.buf.extend_from_slice(b);
        self
    }

    /// Fixed-width bytes (their width is implied by the field).
    pub(crate) fn fixed(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }

    pub(crate) fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    /// An optional `u64`: a presence byte, then the value.
    pub(crate) fn opt_u64(&mut self, v: Option<u64>) -> &mut Self {
        match v {
            None => self.u8(0),
            Some(v) => self.u8(1).u64(v),
        }
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Fixed-size byte arrays as lowercase hex strings in serde formats (JSON for the CLI).
pub(crate) mod hex_array {
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer, const N: usize>(
        v: &[u8; N],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; N];
        hex::decode_to_slice(&s, &mut out).map_err(D::Error::custom)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::Encoder;

    #[test]
    fn encodings_are_length_prefixed_and_big_endian() {
        let mut e = Encoder::new();
        e.u8(1)
            .bool(true)
            .u32(2)
            .u64(3)
            .i64(-1)
            .str("ab")
            .fixed(&[9])
            .opt_u64(None)
            .opt_u64(Some(5));
        let mut want = vec![1, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3];
        want.extend([0xff; 8]);
        want.extend([
            0, 0, 0, 0, 0, 0, 0, 2, b'a', b'b', 9, 0, 1, 0, 0, 0, 0, 0, 0, 0, 5,
        ]);
        assert_eq!(e.finish(), want);
        // "a" + "b" and "ab" + "" differ.
        let mut x = Encoder::new();
        x.str("a").str("b");
        let mut y = Encoder::new();
        y.str("ab").str("");
        assert_ne!(x.finish(), y.finish());
    }
}

/// `bitcoin::Amount` as a number of satoshis in serde formats.
pub(crate) mod amount_sat {
    use bitcoin::Amount;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &Amount, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(v.to_sat())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Amount, D::Error> {
        u64::deserialize(d).map(Amount::from_sat)
    }
}
