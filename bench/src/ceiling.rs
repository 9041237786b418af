//! The CPU ceiling: single-core throughput of each stage of a restic-format backup pipeline on
//! this machine, measured with the very crates rustic_core 0.13 uses (`sha2` 0.11,
//! `aes256ctr_poly1305aes`, `zstd`, `rustic_cdc`'s Rabin64), on a corpus shaped like the data set.
//!
//! Ideal pipeline per input byte: content-defined chunking (files larger than the 512 KiB minimum
//! chunk only: smaller ones are one blob and are never rolled), SHA-256 (blob id), zstd level 3,
//! AES-256-CTR + Poly1305-AES over the compressed bytes, SHA-256 of the pack (compressed,
//! encrypted bytes). Summed per byte and divided by the cores, that is the fastest a backup of
//! this data set can go on this machine when reading and uploading cost nothing.
//!
//! Two figures rustic_core adds beyond the ideal are measured too, to show their price: it
//! compresses with `zstd::stream::encode_all` (a new compression context per blob) and by default
//! verifies every blob after encrypting it (`extra_verify`: decrypt + decompress + compare).

use std::hint::black_box;
use std::io::{self, Read};
use std::time::{Duration, Instant};

use aes256ctr_poly1305aes::Aes256CtrPoly1305Aes;
use aes256ctr_poly1305aes::aead::AeadInPlace as _;
use rustic_cdc::{Rabin64, RollingHash64 as _};
use serde::Serialize;
use sha2_rustic::{Digest as _, Sha256};

use crate::dataset::{Dataset, Kind};

const MIB: f64 = 1024.0 * 1024.0;
/// rustic_core's (and restic's) Rabin chunker defaults.
const CHUNK_MIN: usize = 512 * 1024;
const CHUNK_AVG: usize = 1024 * 1024;
const CHUNK_MAX: usize = 8 * 1024 * 1024;
/// An irreducible polynomial of degree 53 (restic's test polynomial; repositories draw a random
/// one at init, which costs the same per byte).
const POLYNOMIAL: u64 = 0x003D_A335_8B4D_C173;
/// zstd level of restic's and rustic's default compression (rustic passes 0, zstd's "default",
/// which is 3).
const ZSTD_LEVEL: i32 = 3;

/// Throughput of one stage on one kind of content.
#[derive(Debug, Clone, Serialize)]
pub struct StageRate {
    pub stage: &'static str,
    pub content: &'static str,
    /// MiB of the stage's own input per second, one core.
    pub mib_s: f64,
    /// What the stage's input is.
    pub input: &'static str,
}

/// The measured ceiling.
#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    pub stages: Vec<StageRate>,
    /// Stored bytes / input bytes after zstd (per content kind).
    pub zstd_ratio_compressible: f64,
    pub zstd_ratio_random: f64,
    pub cores: usize,
    /// Ideal pipeline, whole data set, all cores (MiB/s of input).
    pub ceiling_mib_s: f64,
    /// The same for the compressible and the random half alone.
    pub ceiling_compressible_mib_s: f64,
    pub ceiling_random_mib_s: f64,
    /// With rustic_core's per-blob zstd context and its extra verification.
    pub rustic_pipeline_mib_s: f64,
    /// The ideal pipeline plus verification of every blob before upload (decrypt, decompress,
    /// compare), which restic does since 0.17 and Cofre's archiver does by default.
    pub verified_pipeline_mib_s: f64,
    pub corpus_mib: f64,
    pub seconds_per_stage: f64,
    /// rustic_core builds a new `Rabin64` (two 256-entry tables) for every file it reads:
    /// microseconds per file, and CPU seconds for all files of the data set.
    pub rabin_setup_us: f64,
    pub rabin_setup_total_s: f64,
    /// Cores other processes kept busy while the stages were measured.
    pub background_cores: f64,
}

/// Seconds per input byte of one kind, by stage, on one core.
#[derive(Default)]
struct Costs {
    chunk: f64,
    sha: f64,
    zstd: f64,
    zstd_rustic: f64,
    encrypt: f64,
    sha_pack: f64,
    verify: f64,
}

impl Costs {
    fn ideal(&self) -> f64 {
        self.chunk + self.sha + self.zstd + self.encrypt + self.sha_pack
    }

    fn verified(&self) -> f64 {
        self.ideal() + self.verify
    }

    fn rustic(&self) -> f64 {
        self.chunk + self.sha + self.zstd_rustic + self.encrypt + self.sha_pack + self.verify
    }
}

/// Measures every stage for both kinds of content, about `per_stage` each, on a corpus of
/// `corpus_bytes` per kind shaped like `set`.
pub fn measure(set: &Dataset, cores: usize, corpus_bytes: u64, per_stage: Duration) -> Ceiling {
    let mut stages = Vec::new();
    let mut ratios = [0.0; 2];
    let mut costs = Vec::new();
    for (i, kind) in [Kind::Text, Kind::Random].into_iter().enumerate() {
        let (small, large) = set.summary.bytes_of(kind);
        let total = (small + large).max(1);
        let large_share = large as f64 / total as f64;
        let large_corpus = (corpus_bytes as f64 * large_share) as u64;
        let (mut blobs, stream) = set.sample(kind, corpus_bytes - large_corpus, large_corpus);
        let label = kind.label();

        let mut c = Costs::default();
        if stream.len() > CHUNK_MIN {
            let rate = rate_of(per_stage, || {
                let chunks =
                    RabinChunks::new(&stream[..]).map(|c| c.map(|c| c.len()).unwrap_or(0)).sum::<usize>();
                black_box(chunks) as u64
            });
            stages.push(StageRate {
                stage: "chunk (Rabin64, rustic's ChunkIter)",
                content: label,
                mib_s: rate / MIB,
                input: "file bytes (files > 512 KiB)",
            });
            c.chunk = large_share / rate;
            blobs.extend(RabinChunks::new(&stream[..]).map_while(Result::ok));
        } else if !stream.is_empty() {
            blobs.push(stream);
        }
        let input: u64 = blobs.iter().map(|b| b.len() as u64).sum();

        let sha = rate_of(per_stage, || {
            for b in &blobs {
                black_box(Sha256::digest(b));
            }
            input
        });
        stages.push(StageRate {
            stage: "SHA-256 (blob id)",
            content: label,
            mib_s: sha / MIB,
            input: "blob bytes",
        });
        c.sha = 1.0 / sha;

        let mut compressor = zstd::bulk::Compressor::new(ZSTD_LEVEL).expect("zstd context");
        let compressed: Vec<Vec<u8>> = blobs.iter().map(|b| compressor.compress(b).expect("zstd")).collect();
        let packed: u64 = compressed.iter().map(|b| b.len() as u64).sum();
        let ratio = packed as f64 / input.max(1) as f64;
        ratios[i] = ratio;
        let zstd = rate_of(per_stage, || {
            for b in &blobs {
                black_box(compressor.compress(b).expect("zstd"));
            }
            input
        });
        stages.push(StageRate {
            stage: "zstd level 3 (one reused context)",
            content: label,
            mib_s: zstd / MIB,
            input: "blob bytes",
        });
        c.zstd = 1.0 / zstd;
        let zstd_rustic = rate_of(per_stage, || {
            for b in &blobs {
                black_box(zstd::stream::encode_all(&b[..], 0).expect("zstd"));
            }
            input
        });
        stages.push(StageRate {
            stage: "zstd level 3 as rustic calls it (encode_all: new context per blob)",
            content: label,
            mib_s: zstd_rustic / MIB,
            input: "blob bytes",
        });
        c.zstd_rustic = 1.0 / zstd_rustic;

        let mut key = aes256ctr_poly1305aes::Key::default();
        key.iter_mut().for_each(|b| *b = 7);
        let mut sealed: Vec<(Vec<u8>, aes256ctr_poly1305aes::Tag)> = Vec::with_capacity(compressed.len());
        let encrypt = rate_of(per_stage, || {
            sealed.clear();
            for b in &compressed {
                // A cipher per blob, as rustic_core's `Key::encrypt_data` does.
                let mut buf = b.clone();
                let nonce = aes256ctr_poly1305aes::Nonce::default();
                let tag = Aes256CtrPoly1305Aes::new(&key)
                    .encrypt_in_place_detached(&nonce, &[], &mut buf)
                    .expect("aead");
                sealed.push((buf, tag));
            }
            packed
        });
        stages.push(StageRate {
            stage: "AES-256-CTR + Poly1305-AES (encrypt)",
            content: label,
            mib_s: encrypt / MIB,
            input: "compressed bytes",
        });
        c.encrypt = ratio / encrypt;

        let sha_pack = rate_of(per_stage, || {
            let mut h = Sha256::new();
            for (b, tag) in &sealed {
                h.update(b);
                h.update(tag);
            }
            black_box(h.finalize());
            packed
        });
        stages.push(StageRate {
            stage: "SHA-256 (pack id)",
            content: label,
            mib_s: sha_pack / MIB,
            input: "compressed bytes",
        });
        c.sha_pack = ratio / sha_pack;

        let verify = rate_of(per_stage, || {
            for ((b, tag), original) in sealed.iter().zip(&blobs) {
                let mut buf = b.clone();
                let nonce = aes256ctr_poly1305aes::Nonce::default();
                Aes256CtrPoly1305Aes::new(&key)
                    .decrypt_in_place_detached(&nonce, &[], &mut buf, tag)
                    .expect("aead");
                let plain = zstd::stream::decode_all(&buf[..]).expect("zstd");
                assert!(plain == *original, "round trip");
            }
            input
        });
        stages.push(StageRate {
            stage: "rustic's extra verify (decrypt + decompress + compare)",
            content: label,
            mib_s: verify / MIB,
            input: "blob bytes",
        });
        c.verify = 1.0 / verify;
        costs.push((kind, c));
    }

    let n = cores as f64;
    let whole = |f: &dyn Fn(&Costs) -> f64| {
        let mut seconds = 0.0;
        let mut bytes = 0.0;
        for (kind, c) in &costs {
            let (small, large) = set.summary.bytes_of(*kind);
            let b = (small + large) as f64;
            seconds += b * f(c);
            bytes += b;
        }
        bytes / (seconds / n) / MIB
    };
    let one = |kind: Kind| costs.iter().find(|(k, _)| *k == kind).map_or(0.0, |(_, c)| n / c.ideal() / MIB);
    let per_setup = 1.0
        / rate_of(per_stage, || {
            black_box(Rabin64::new_with_polynom(6, &POLYNOMIAL));
            1
        });
    Ceiling {
        rabin_setup_us: per_setup * 1e6,
        rabin_setup_total_s: per_setup * set.summary.files as f64,
        background_cores: 0.0,
        stages,
        zstd_ratio_compressible: ratios[0],
        zstd_ratio_random: ratios[1],
        cores,
        ceiling_mib_s: whole(&Costs::ideal),
        ceiling_compressible_mib_s: one(Kind::Text),
        ceiling_random_mib_s: one(Kind::Random),
        rustic_pipeline_mib_s: whole(&Costs::rustic),
        verified_pipeline_mib_s: whole(&Costs::verified),
        corpus_mib: corpus_bytes as f64 / MIB,
        seconds_per_stage: per_stage.as_secs_f64(),
    }
}

/// Bytes per second of `work` (which returns the bytes it processed): the best of three slices
/// of a third of `budget` each. On a shared machine the least disturbed slice is the closest to
/// what a core can do.
fn rate_of(budget: Duration, mut work: impl FnMut() -> u64) -> f64 {
    let slice = budget / 3;
    let mut best = 0.0f64;
    for _ in 0..3 {
        let start = Instant::now();
        let mut bytes = 0u64;
        loop {
            bytes += work();
            let elapsed = start.elapsed();
            if elapsed >= slice {
                let rate = bytes as f64 / elapsed.as_secs_f64();
                best = best.max(rate);
                break;
            }
        }
    }
    best
}

/// rustic_core 0.13's Rabin chunker (`src/chunker/rabin.rs`, `ChunkIter`, MIT/Apache-2.0),
/// reproduced step by step because it is crate-private: it reads the first `min_size` bytes of a
/// chunk without hashing, primes the 64-byte window with the last 64 of them, then rolls byte by
/// byte (through a 4 KiB read buffer) until the hash's low 20 bits are zero or `max_size` is hit.
struct RabinChunks<R: Read> {
    buf: Vec<u8>,
    pos: usize,
    reader: R,
    split_mask: u64,
    rabin: Rabin64,
    finished: bool,
}

impl<R: Read> RabinChunks<R> {
    fn new(reader: R) -> Self {
        const BUF_SIZE: usize = 4 * 1024;
        RabinChunks {
            buf: vec![0; BUF_SIZE],
            pos: BUF_SIZE,
            reader,
            split_mask: CHUNK_AVG as u64 - 1,
            rabin: Rabin64::new_with_polynom(6, &POLYNOMIAL),
            finished: false,
        }
    }
}

impl<R: Read> Iterator for RabinChunks<R> {
    type Item = io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        let mut min_size = CHUNK_MIN;
        let mut vec = Vec::with_capacity(min_size);
        let open_buf_len = self.buf.len() - self.pos;
        if open_buf_len > 0 {
            vec.extend_from_slice(&self.buf[self.pos..]);
            self.pos = self.buf.len();
            min_size -= open_buf_len;
        }
        let size = match (&mut self.reader).take(min_size as u64).read_to_end(&mut vec) {
            Ok(size) => size,
            Err(err) => return Some(Err(err)),
        };
        if size < min_size {
            self.finished = true;
            vec.truncate(size + open_buf_len);
            return if vec.is_empty() { None } else { Some(Ok(vec)) };
        }
        let _ = self.rabin.reset_and_prefill_window(&mut vec[vec.len() - 64..].iter().copied());
        loop {
            if vec.len() >= CHUNK_MAX || (self.rabin.hash & self.split_mask) == 0 {
                break;
            }
            if self.buf.len() == self.pos {
                match self.reader.read(&mut self.buf[..]) {
                    Ok(0) => {
                        self.finished = true;
                        break;
                    }
                    Ok(size) => {
                        self.pos = 0;
                        self.buf.truncate(size);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(err) => return Some(Err(err)),
                }
            }
            let byte = self.buf[self.pos];
            vec.push(byte);
            self.pos += 1;
            self.rabin.slide(byte);
        }
        Some(Ok(vec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_input_within_bounds() {
        let mut data = vec![0u8; 6 * 1024 * 1024 + 12_345];
        let mut x = 1u64;
        for b in &mut data {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = (x >> 24) as u8;
        }
        let chunks: Vec<Vec<u8>> = RabinChunks::new(&data[..]).map(Result::unwrap).collect();
        assert_eq!(chunks.concat(), data);
        assert!(chunks.len() >= 2, "{}", chunks.len());
        for c in &chunks[..chunks.len() - 1] {
            assert!((CHUNK_MIN..=CHUNK_MAX).contains(&c.len()), "{}", c.len());
        }
        // Content-defined: a prefix shift keeps the later boundaries.
        let shifted: Vec<u8> = [&[1u8, 2, 3][..], &data[..]].concat();
        let later: Vec<Vec<u8>> = RabinChunks::new(&shifted[..]).map(Result::unwrap).collect();
        assert_eq!(later.last(), chunks.last());
    }
}
