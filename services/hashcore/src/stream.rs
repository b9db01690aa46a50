//! One-shot, streaming and tagged SHA-256.

use crate::portable::{state_to_digest, IV};
use crate::{BatchError, Digest, Engine};

/// SHA-256 of `data` in one call.
pub fn sha256(data: &[u8]) -> Digest {
    let mut h = Sha256::new();
    h.update(data);
    h.finalize()
}

/// Double SHA-256 (`SHA-256(SHA-256(data))`), as Bitcoin uses for txids and block hashes.
pub fn sha256d(data: &[u8]) -> Digest {
    sha256(&sha256(data))
}

/// A streaming SHA-256 hasher.
#[derive(Clone)]
pub struct Sha256 {
    state: [u32; 8],
    buf: [u8; 64],
    buf_len: usize,
    /// Bytes compressed so far (whole blocks), not counting `buf`.
    compressed: u64,
    engine: &'static Engine,
}

impl core::fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Sha256")
            .field("len", &self.len())
            .field("backend", &self.engine.backend())
            .finish_non_exhaustive()
    }
}

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl Sha256 {
    /// A new hasher on the automatically chosen engine.
    pub fn new() -> Self {
        Self::with_engine(Engine::auto())
    }

    /// A new hasher that compresses on `engine`'s backend.
    pub fn with_engine(engine: &'static Engine) -> Self {
        Sha256 {
            state: IV,
            buf: [0; 64],
            buf_len: 0,
            compressed: 0,
            engine,
        }
    }

    /// Resumes from a midstate: the state after `compressed_bytes` bytes (a multiple of 64).
    pub(crate) fn from_midstate(
        state: [u32; 8],
        compressed_bytes: u64,
        engine: &'static Engine,
    ) -> Self {
        Sha256 {
            state,
            buf: [0; 64],
            buf_len: 0,
            compressed: compressed_bytes,
            engine,
        }
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.compressed + self.buf_len as u64
    }

    /// True when nothing was fed yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Feeds `data`.
    pub fn update(&mut self, mut data: &[u8]) {
        if self.buf_len > 0 {
            let take = (64 - self.buf_len).min(data.len());
            self.buf[self.buf_len..self.buf_len + take].copy_from_slice(&data[..take]);
            self.buf_len += take;
            data = &data[take..];
            if self.buf_len < 64 {
                return;
            }
            let block = self.buf;
            self.engine
                .compress(&mut self.state, core::slice::from_ref(&block));
            self.compressed += 64;
            self.buf_len = 0;
        }
        let (blocks, rest) = data.as_chunks::<64>();
        if !blocks.is_empty() {
            self.engine.compress(&mut self.state, blocks);
            self.compressed += 64 * blocks.len() as u64;
        }
        self.buf[..rest.len()].copy_from_slice(rest);
        self.buf_len = rest.len();
    }

    /// Feeds `data` and returns the hasher, for chaining.
    pub fn chain(mut self, data: &[u8]) -> Self {
        self.update(data);
        self
    }

    /// Pads and returns the digest.
    pub fn finalize(mut self) -> Digest {
        let bit_len = self.len().wrapping_mul(8);
        let mut tail = [0u8; 128];
        tail[..self.buf_len].copy_from_slice(&self.buf[..self.buf_len]);
        tail[self.buf_len] = 0x80;
        let tail_len = if self.buf_len < 56 { 64 } else { 128 };
        tail[tail_len - 8..tail_len].copy_from_slice(&bit_len.to_be_bytes());
        let (blocks, _) = tail[..tail_len].as_chunks::<64>();
        self.engine.compress(&mut self.state, blocks);
        state_to_digest(&self.state)
    }
}

/// A BIP-340 style tagged hash, `SHA-256(SHA-256(tag) || SHA-256(tag) || msg)`, with the
/// midstate after the 64-byte tag prefix computed once and reused for every message.
#[derive(Clone)]
pub struct TaggedHash {
    midstate: [u32; 8],
    tag: Box<str>,
    engine: &'static Engine,
}

impl core::fmt::Debug for TaggedHash {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TaggedHash")
            .field("tag", &self.tag)
            .finish()
    }
}

impl TaggedHash {
    /// Prepares the tagged hash for `tag` (its midstate is computed here, once).
    pub fn new(tag: &str) -> Self {
        Self::with_engine(tag, Engine::auto())
    }

    /// As [`TaggedHash::new`], compressing on `engine`.
    pub fn with_engine(tag: &str, engine: &'static Engine) -> Self {
        let t = sha256(tag.as_bytes());
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(&t);
        block[32..].copy_from_slice(&t);
        let mut midstate = IV;
        engine.compress(&mut midstate, core::slice::from_ref(&block));
        TaggedHash {
            midstate,
            tag: tag.into(),
            engine,
        }
    }

    /// The tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// A streaming hasher already fed with the tag prefix.
    pub fn hasher(&self) -> Sha256 {
        Sha256::from_midstate(self.midstate, 64, self.engine)
    }

    /// The tagged hash of `msg`.
    pub fn hash(&self, msg: &[u8]) -> Digest {
        self.hasher().chain(msg).finalize()
    }

    /// The tagged hashes of many messages of the same length `message_len`, laid end to end
    /// in `messages`: `out[i]` is the tagged hash of `messages[i*len .. (i+1)*len]`, equal to
    /// [`TaggedHash::hash`] of it. Batched on `engine`'s backend (several messages side by side
    /// from the tag's midstate), for many short independent messages such as salted
    /// commitments.
    ///
    /// # Errors
    /// As [`Engine::hash_fixed`]: [`BatchError::RaggedMessages`], [`BatchError::OutputLength`].
    pub fn hash_fixed(
        &self,
        engine: &Engine,
        messages: &[u8],
        message_len: usize,
        out: &mut [Digest],
    ) -> Result<(), BatchError> {
        engine.hash_fixed_from(&self.midstate, 64, messages, message_len, out)
    }
}
