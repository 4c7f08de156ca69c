//! Audit packs: a chain's blocks and certificates in one file, verifiable with no node
//! running.
//!
//! A pack holds, in order:
//!
//! 1. the magic bytes [`MAGIC`] and the format version (`u32`, little-endian);
//! 2. the hash of the genesis the chain starts from (32 bytes);
//! 3. one record per height from 1: its length (`u32`, little-endian, never zero) and
//!    the borsh encoding of `(Block, CommitCertificate)`;
//! 4. an end marker: a zero length, the number of records (`u64`, little-endian) and
//!    the hash of the last block (the genesis hash when there is none).
//!
//! The end marker tells a complete pack from one cut short. Nothing in a pack is
//! trusted: the reader checks only the framing (lengths bounded before anything is
//! allocated), and [`crate::HistoryVerifier`] checks the contents. A pack is written
//! to a temporary file that is renamed into place when complete, so a crash while
//! exporting never leaves a pack that looks whole.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use stele_consensus::{CommitCertificate, Hash};
use thiserror::Error;

use crate::block::Block;

/// The first bytes of every pack.
pub const MAGIC: &[u8; 16] = b"stele-audit-pack";
/// The format version written, and the only one read.
pub const VERSION: u32 = 1;
/// Room for a certificate beside the block in one record: generous for any validator
/// set a genesis allows.
pub const CERTIFICATE_BYTES_MAX: usize = 1 << 20;

/// Why a pack cannot be read. Errors about a record name the height it stands for
/// (record `n` holds height `n`).
#[derive(Debug, Error)]
pub enum PackError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The pack.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file does not start with [`MAGIC`].
    #[error("{path}: not a Stele audit pack (bad magic bytes)")]
    BadMagic {
        /// The file.
        path: PathBuf,
    },
    /// A version this build does not read.
    #[error("{path}: audit pack version {version}, this build reads version {VERSION}")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        version: u32,
    },
    /// A record longer than any valid block and certificate.
    #[error("height {height}: record of {len} bytes exceeds the limit of {max}")]
    RecordTooLarge {
        /// Height the record stands for.
        height: u64,
        /// Its stated length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The file ends inside a record or before the end marker.
    #[error("height {height}: pack ends early (truncated before this record or the end marker)")]
    Truncated {
        /// The height whose record (or the end marker after it) is cut off.
        height: u64,
    },
    /// A record that is not a borsh `(Block, CommitCertificate)`.
    #[error("height {height}: record does not decode as a block and certificate: {reason}")]
    Decode {
        /// Height the record stands for.
        height: u64,
        /// The decoder's message.
        reason: String,
    },
    /// The end marker disagrees with the records before it.
    #[error(
        "end marker says {stated_count} blocks ending with {stated_hash}, the pack holds {count} ending with {hash}"
    )]
    EndMismatch {
        /// Blocks the marker states.
        stated_count: u64,
        /// Last block hash the marker states.
        stated_hash: Hash,
        /// Blocks read.
        count: u64,
        /// Hash of the last block read.
        hash: Hash,
    },
    /// Bytes after the end marker.
    #[error("{path}: bytes after the end marker")]
    TrailingBytes {
        /// The file.
        path: PathBuf,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> PackError + '_ {
    move |source| PackError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes a pack; see the module documentation for the format.
pub struct PackWriter {
    path: PathBuf,
    temp: PathBuf,
    /// `None` once finished.
    out: Option<BufWriter<File>>,
    count: u64,
    last_hash: Hash,
}

impl PackWriter {
    /// Starts a pack for the chain of `genesis_hash` at `path` (written to a temporary
    /// file beside it until [`PackWriter::finish`]).
    pub fn create(path: &Path, genesis_hash: Hash) -> Result<PackWriter, PackError> {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".partial");
        let temp = path.with_file_name(name);
        let file = File::create(&temp).map_err(io_error(&temp))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(MAGIC).map_err(io_error(&temp))?;
        out.write_all(&VERSION.to_le_bytes())
            .map_err(io_error(&temp))?;
        out.write_all(genesis_hash.as_bytes())
            .map_err(io_error(&temp))?;
        Ok(PackWriter {
            path: path.to_owned(),
            temp,
            out: Some(out),
            count: 0,
            last_hash: genesis_hash,
        })
    }

    /// Appends the next block with its certificate.
    pub fn append(
        &mut self,
        block: &Block,
        certificate: &CommitCertificate,
    ) -> Result<(), PackError> {
        let bytes =
            borsh::to_vec(&(block, certificate)).expect("borsh encoding to a Vec never fails");
        let len = u32::try_from(bytes.len()).map_err(|_| PackError::RecordTooLarge {
            height: self.count + 1,
            len: bytes.len() as u64,
            max: u64::from(u32::MAX),
        })?;
        let out = self
            .out
            .as_mut()
            .expect("not finished: finish takes the writer");
        out.write_all(&len.to_le_bytes())
            .and_then(|()| out.write_all(&bytes))
            .map_err(io_error(&self.temp))?;
        self.count += 1;
        self.last_hash = block.hash();
        Ok(())
    }

    /// Blocks appended so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Writes the end marker, syncs the file and moves it into place.
    pub fn finish(mut self) -> Result<PathBuf, PackError> {
        let temp = self.temp.clone();
        let mut out = self.out.take().expect("finish runs once");
        out.write_all(&0u32.to_le_bytes())
            .and_then(|()| out.write_all(&self.count.to_le_bytes()))
            .and_then(|()| out.write_all(self.last_hash.as_bytes()))
            .and_then(|()| out.flush())
            .map_err(io_error(&temp))?;
        let file = out
            .into_inner()
            .map_err(|e| io_error(&temp)(e.into_error()))?;
        file.sync_all().map_err(io_error(&temp))?;
        std::fs::rename(&temp, &self.path).map_err(io_error(&self.path))?;
        Ok(self.path.clone())
    }
}

impl Drop for PackWriter {
    fn drop(&mut self) {
        // An unfinished pack is removed.
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Reads a pack record by record. It is an iterator of `(Block, CommitCertificate)`
/// that ends after checking the end marker; the first error ends it.
pub struct PackReader {
    path: PathBuf,
    input: BufReader<File>,
    genesis_hash: Hash,
    max_record: u64,
    count: u64,
    last_hash: Hash,
    done: bool,
}

impl PackReader {
    /// Opens a pack and reads its header. Records longer than `max_block_bytes` plus
    /// [`CERTIFICATE_BYTES_MAX`] are refused before being read.
    pub fn open(path: &Path, max_block_bytes: u32) -> Result<PackReader, PackError> {
        let file = File::open(path).map_err(io_error(path))?;
        let mut input = BufReader::with_capacity(1 << 20, file);
        let mut magic = [0u8; 16];
        read_exact_or(&mut input, &mut magic, || PackError::BadMagic {
            path: path.to_owned(),
        })
        .map_err(|e| with_path(e, path))?;
        if &magic != MAGIC {
            return Err(PackError::BadMagic {
                path: path.to_owned(),
            });
        }
        let mut version = [0u8; 4];
        read_exact_or(&mut input, &mut version, || PackError::BadMagic {
            path: path.to_owned(),
        })
        .map_err(|e| with_path(e, path))?;
        let version = u32::from_le_bytes(version);
        if version != VERSION {
            return Err(PackError::UnsupportedVersion {
                path: path.to_owned(),
                version,
            });
        }
        let mut hash = [0u8; 32];
        read_exact_or(&mut input, &mut hash, || PackError::Truncated { height: 1 })
            .map_err(|e| with_path(e, path))?;
        let genesis_hash = Hash::from_bytes(hash);
        Ok(PackReader {
            path: path.to_owned(),
            input,
            genesis_hash,
            max_record: u64::from(max_block_bytes) + CERTIFICATE_BYTES_MAX as u64,
            count: 0,
            last_hash: genesis_hash,
            done: false,
        })
    }

    /// The number of blocks the end marker of the pack at `path` states, read from the
    /// end of the file without reading the records: for progress display only, as
    /// nothing checks it until the whole pack has been read.
    pub fn stated_count(path: &Path) -> Option<u64> {
        use std::io::{Seek, SeekFrom};
        let mut file = File::open(path).ok()?;
        file.seek(SeekFrom::End(-(4 + 8 + 32))).ok()?;
        let mut end = [0u8; 12];
        file.read_exact(&mut end).ok()?;
        if end[..4] != [0; 4] {
            return None;
        }
        Some(u64::from_le_bytes(end[4..].try_into().ok()?))
    }

    /// The genesis hash the pack states (checked against the real genesis by the
    /// caller, and by history verification through the first block's parent hash).
    pub fn genesis_hash(&self) -> Hash {
        self.genesis_hash
    }

    fn read_record(&mut self) -> Result<Option<(Block, CommitCertificate)>, PackError> {
        let height = self.count + 1;
        let mut len = [0u8; 4];
        read_exact_or(&mut self.input, &mut len, || PackError::Truncated {
            height,
        })
        .map_err(|e| with_path(e, &self.path))?;
        let len = u64::from(u32::from_le_bytes(len));
        if len == 0 {
            self.read_end()?;
            return Ok(None);
        }
        if len > self.max_record {
            return Err(PackError::RecordTooLarge {
                height,
                len,
                max: self.max_record,
            });
        }
        let mut bytes = vec![0u8; len as usize];
        read_exact_or(&mut self.input, &mut bytes, || PackError::Truncated {
            height,
        })
        .map_err(|e| with_path(e, &self.path))?;
        let (block, certificate): (Block, CommitCertificate) =
            borsh::from_slice(&bytes).map_err(|e| PackError::Decode {
                height,
                reason: e.to_string(),
            })?;
        self.count = height;
        self.last_hash = block.hash();
        Ok(Some((block, certificate)))
    }

    fn read_end(&mut self) -> Result<(), PackError> {
        let height = self.count + 1;
        let mut count = [0u8; 8];
        let mut hash = [0u8; 32];
        read_exact_or(&mut self.input, &mut count, || PackError::Truncated {
            height,
        })
        .and_then(|()| {
            read_exact_or(&mut self.input, &mut hash, || PackError::Truncated {
                height,
            })
        })
        .map_err(|e| with_path(e, &self.path))?;
        let stated_count = u64::from_le_bytes(count);
        let stated_hash = Hash::from_bytes(hash);
        if stated_count != self.count || stated_hash != self.last_hash {
            return Err(PackError::EndMismatch {
                stated_count,
                stated_hash,
                count: self.count,
                hash: self.last_hash,
            });
        }
        let mut extra = [0u8; 1];
        match self.input.read(&mut extra) {
            Ok(0) => Ok(()),
            Ok(_) => Err(PackError::TrailingBytes {
                path: self.path.clone(),
            }),
            Err(e) => Err(io_error(&self.path)(e)),
        }
    }
}

impl Iterator for PackReader {
    type Item = Result<(Block, CommitCertificate), PackError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.read_record() {
            Ok(Some(record)) => Some(Ok(record)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// `read_exact`, with an early end of file turned into `eof()`.
fn read_exact_or(
    input: &mut impl Read,
    buf: &mut [u8],
    eof: impl FnOnce() -> PackError,
) -> Result<(), PackError> {
    match input.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(eof()),
        Err(e) => Err(PackError::Io {
            path: PathBuf::new(),
            source: e,
        }),
    }
}

fn with_path(error: PackError, path: &Path) -> PackError {
    match error {
        PackError::Io { source, .. } => PackError::Io {
            path: path.to_owned(),
            source,
        },
        other => other,
    }
}
