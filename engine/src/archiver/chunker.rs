//! Content-defined chunking compatible with restic's (and rustic's) Rabin chunker, so files
//! chunked by Cofre, rustic or restic in the same repository deduplicate against each other.
//!
//! The rule: a chunk is at least `min` bytes; from there the Rabin fingerprint of the last 64
//! bytes (the window is prefilled with the 64 bytes before the minimum) is checked before each
//! further byte, and the chunk ends where `hash & (size - 1) == 0`, at `max` bytes, or at the end
//! of the file. The fingerprint tables depend only on the repository's polynomial, so they are
//! built once per backup and cloned per worker (rustic_core 0.13 rebuilds them for every file,
//! 180 µs each: the largest single cost of its backups of small files, see docs/benchmarks.md).

use std::io::{self, Read};

use rustic_cdc::{Rabin64, RollingHash64 as _};
use rustic_core::repofile::{Chunker as ChunkerKind, ConfigFile};

/// Bytes per `read` call while chunking.
const READ_SIZE: usize = 1 << 20;
/// The Rabin window: 2^6 = 64 bytes, restic's.
const WINDOW_BITS: u32 = 6;
const WINDOW: usize = 1 << WINDOW_BITS;

#[derive(Clone)]
pub(crate) struct Chunker {
    rabin: Option<Rabin64>,
    mask: u64,
    size: usize,
    min: usize,
    max: usize,
}

impl Chunker {
    pub(crate) fn from_config(config: &ConfigFile) -> Result<Self, String> {
        let size = config.chunk_size();
        let (min, max) = (config.chunk_min_size(), config.chunk_max_size());
        let rabin = match config.chunker() {
            ChunkerKind::Rabin => {
                if !size.is_power_of_two() || min > size || max < size || min < WINDOW {
                    return Err(format!("unsupported chunker sizes (size {size}, min {min}, max {max})"));
                }
                let poly = config.poly().map_err(|e| format!("chunker polynomial: {e}"))?;
                Some(Rabin64::new_with_polynom(WINDOW_BITS, &poly))
            }
            ChunkerKind::FixedSize => None,
        };
        Ok(Self { rabin, mask: size as u64 - 1, size, min, max })
    }

    /// Files up to this size are one chunk: read them whole.
    pub(crate) fn single_chunk_limit(&self) -> usize {
        if self.rabin.is_some() { self.min } else { self.size }
    }

    /// Splits everything `reader` delivers into chunks, handing each to `emit`. `buf` is scratch
    /// space reused between files.
    pub(crate) fn split<E>(
        &mut self,
        reader: &mut impl Read,
        buf: &mut Vec<u8>,
        mut emit: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), SplitError<E>> {
        buf.clear();
        let mut eof = false;
        loop {
            let min = if self.rabin.is_some() { self.min } else { self.size };
            while buf.len() < min && !eof {
                eof = fill(reader, buf)?;
            }
            if buf.len() < min {
                if !buf.is_empty() {
                    emit(buf).map_err(SplitError::Emit)?;
                }
                return Ok(());
            }
            let cut = match &mut self.rabin {
                None => min,
                Some(rabin) => {
                    rabin.reset_and_prefill_window(&mut buf[min - WINDOW..min].iter().copied());
                    let mut pos = min;
                    loop {
                        if pos >= self.max || rabin.hash & self.mask == 0 {
                            break pos;
                        }
                        if pos == buf.len() {
                            if eof {
                                break pos;
                            }
                            eof = fill(reader, buf)?;
                            continue;
                        }
                        rabin.slide(buf[pos]);
                        pos += 1;
                    }
                }
            };
            emit(&buf[..cut]).map_err(SplitError::Emit)?;
            buf.drain(..cut);
            if eof && buf.is_empty() {
                return Ok(());
            }
        }
    }
}

/// Reads up to [`READ_SIZE`] more bytes into `buf`; true at the end of the input.
fn fill(reader: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<bool> {
    let start = buf.len();
    buf.resize(start + READ_SIZE, 0);
    loop {
        match reader.read(&mut buf[start..]) {
            Ok(n) => {
                buf.truncate(start + n);
                return Ok(n == 0);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                buf.truncate(start);
                return Err(e);
            }
        }
    }
}

#[derive(Debug)]
pub(crate) enum SplitError<E> {
    /// Reading failed (the reader has recorded the warning).
    Read,
    Emit(E),
}

impl<E> From<io::Error> for SplitError<E> {
    fn from(_: io::Error) -> Self {
        Self::Read
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archiver::pseudo_random;

    fn config() -> ConfigFile {
        ConfigFile::new(2, rustic_core::Id::random().into(), 0x3DA3358B4DC173)
    }

    fn chunks(chunker: &mut Chunker, input: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        chunker
            .split(&mut &input[..], &mut buf, |c| {
                out.push(c.to_vec());
                Ok::<(), ()>(())
            })
            .unwrap();
        out
    }

    #[test]
    fn chunks_are_bounded_cover_the_input_and_resynchronise() {
        let mut chunker = Chunker::from_config(&config()).unwrap();
        let input = pseudo_random(20 << 20, 42);
        let got = chunks(&mut chunker, &input);
        assert_eq!(got.concat(), input);
        assert!(got.len() > 5, "a 20 MiB random input has content-defined cuts ({} chunks)", got.len());
        for c in &got[..got.len() - 1] {
            assert!(c.len() >= 512 << 10 && c.len() <= 8 << 20, "chunk of {} bytes", c.len());
        }
        // Content-defined: a prefix inserted at the start changes only the first chunks.
        let mut shifted = pseudo_random(1000, 7);
        shifted.extend_from_slice(&input);
        let again = chunks(&mut chunker, &shifted);
        let common = got.iter().filter(|c| again.contains(c)).count();
        assert!(common + 2 >= got.len(), "{common} of {} chunks survive an insertion", got.len());
        assert!(chunks(&mut chunker, &[]).is_empty());
        assert_eq!(chunks(&mut chunker, b"small"), vec![b"small".to_vec()]);
    }
}
