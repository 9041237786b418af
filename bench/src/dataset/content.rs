//! Deterministic content: a fully specified PRNG (SplitMix64) and the byte streams of the data
//! set's files, text-like (log lines from a small vocabulary) or random.

use super::Kind;

/// Which variant of a file's content to generate.
#[derive(Clone, Copy)]
pub(crate) enum Salt {
    Original = 0,
    Mutated = 1,
}

/// A vocabulary of 4096 pseudo-words for text-like content.
#[derive(Debug)]
pub(crate) struct Vocab(Vec<Vec<u8>>);

impl Vocab {
    pub(crate) fn new(seed: u64) -> Vocab {
        let mut rng = Rng::new(mix(seed, 0x0076_6f63_6162, 0));
        let words = (0..4096)
            .map(|_| {
                let len = 2 + rng.below(9);
                // below 26
                (0..len).map(|_| b'a' + rng.below(26) as u8).collect()
            })
            .collect();
        Vocab(words)
    }
}

/// The byte stream of one file (deterministic from seed, file id and salt).
pub(crate) struct ContentGen<'a> {
    rng: Rng,
    kind: Kind,
    vocab: &'a Vocab,
    line: Vec<u8>,
}

impl<'a> ContentGen<'a> {
    pub(crate) fn new(seed: u64, id: u64, salt: Salt, kind: Kind, vocab: &'a Vocab) -> ContentGen<'a> {
        ContentGen {
            rng: Rng::new(mix(seed, id, salt as u64 + 1)),
            kind,
            vocab,
            line: Vec::with_capacity(256),
        }
    }

    /// Appends exactly `n` bytes to `out`.
    pub(crate) fn fill(&mut self, out: &mut Vec<u8>, n: usize) {
        let end = out.len() + n;
        match self.kind {
            Kind::Random => {
                while out.len() + 8 <= end {
                    out.extend_from_slice(&self.rng.next_u64().to_le_bytes());
                }
                let rest = end - out.len();
                out.extend_from_slice(&self.rng.next_u64().to_le_bytes()[..rest]);
            }
            Kind::Text => {
                while out.len() < end {
                    self.next_line();
                    let take = self.line.len().min(end - out.len());
                    out.extend_from_slice(&self.line[..take]);
                }
            }
        }
    }

    /// A log-like line: `2026-11-27T08:41:07.123Z INFO worker-3 words... id=12345`.
    fn next_line(&mut self) {
        const LEVELS: [&[u8]; 4] = [b" INFO ", b" DEBUG ", b" WARN ", b" INFO "];
        let r = self.rng.next_u64();
        self.line.clear();
        self.line.extend_from_slice(
            format!(
                "2026-11-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                1 + r % 28,
                (r >> 8) % 24,
                (r >> 16) % 60,
                (r >> 24) % 60,
                (r >> 32) % 1000
            )
            .as_bytes(),
        );
        self.line.extend_from_slice(LEVELS[((r >> 42) % 4) as usize]);
        self.line.extend_from_slice(format!("worker-{}", (r >> 44) % 8).as_bytes());
        let words = 4 + self.rng.below(12);
        for _ in 0..words {
            self.line.push(b' ');
            // below 4096
            self.line.extend_from_slice(&self.vocab.0[self.rng.below(4096) as usize]);
        }
        self.line.extend_from_slice(format!(" id={}\n", (r >> 50) * 7 % 100_000).as_bytes());
    }
}

pub(crate) fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut r =
        Rng::new(seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F));
    r.next_u64()
}

/// SplitMix64: tiny, fast, and fully specified (no dependency whose output could change).
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is irrelevant here).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    // 53 bits
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}
