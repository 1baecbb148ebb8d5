//! A ring of records in memory shared by two processes of one host: one writes, the other
//! reads, neither makes a system call to do so.
//!
//! The reading process creates the ring (an anonymous memory file, sealed at its size) and
//! tells the writer where it is: its process id and the file's descriptor, which the writer
//! opens as `/proc/<pid>/fd/<fd>`. Linux lets only processes of the same user (or with
//! `CAP_SYS_PTRACE`) open that path. The ring starts with a random token that the reader
//! also sends the writer on their authenticated connection: the writer checks it, so it
//! never writes into a ring it was not given (a process id reused, another host).
//!
//! Every word of the ring is read and written atomically, and the reader checks each length
//! and position it reads: a writer that writes garbage makes the reader drop the ring, never
//! read out of bounds.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

/// Where a reader's ring is: the process and its descriptor of the memory file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct RingAddress {
    pub(crate) pid: u32,
    pub(crate) fd: i32,
}

/// Identifies a ring (and checks that the memory is one).
const MAGIC: u64 = u64::from_le_bytes(*b"dgr-ring");
/// Words of the ring's data (a power of two): 64 KiB.
const DATA_WORDS: u64 = 8192;
/// The header: magic, token, data size; then the reader's and the writer's positions and
/// the reader's wish to be woken, each on its own cache line.
const MAGIC_AT: usize = 0;
const TOKEN_AT: usize = 1;
const SIZE_AT: usize = 3;
const READ_AT: usize = 8;
const WRITTEN_AT: usize = 16;
const WAKE_AT: usize = 24;
const HEADER_WORDS: usize = 32;
const RING_WORDS: usize = HEADER_WORDS + DATA_WORDS as usize;

/// The largest record a ring takes, in bytes.
pub(crate) const MAX_RECORD: usize = 16 << 10;

/// The ring's token: 16 random bytes.
pub(crate) type Token = [u8; 16];

/// The reading side, in the process that created the ring.
pub(crate) struct Reader {
    map: Mapping,
    file: std::fs::File,
    /// Where the next record starts (words since the ring was made).
    read: u64,
}

impl Reader {
    /// A new, empty ring that starts with `token`.
    pub(crate) fn create(token: Token) -> io::Result<Reader> {
        let file = imp::memory_file(RING_WORDS * 8)?;
        let map = Mapping::new(&file)?;
        map.word(TOKEN_AT).store(
            u64::from_le_bytes(token[..8].try_into().unwrap()),
            Ordering::Relaxed,
        );
        map.word(TOKEN_AT + 1).store(
            u64::from_le_bytes(token[8..].try_into().unwrap()),
            Ordering::Relaxed,
        );
        map.word(SIZE_AT).store(DATA_WORDS, Ordering::Relaxed);
        map.word(MAGIC_AT).store(MAGIC, Ordering::Release);
        Ok(Reader { map, file, read: 0 })
    }

    /// Where a writer of this host finds the ring.
    pub(crate) fn address(&self) -> RingAddress {
        use std::os::fd::AsRawFd;
        RingAddress {
            pid: std::process::id(),
            fd: self.file.as_raw_fd(),
        }
    }

    /// Whether the writer wakes this process (see [`Writer::wants_wake`]) after each record
    /// it writes from now on. Call [`Reader::read`] after turning it on: records written
    /// before it was on woke nobody.
    pub(crate) fn set_wake(&self, on: bool) {
        self.map.word(WAKE_AT).store(on as u64, Ordering::SeqCst);
        // Pairs with the fence in `Writer::wants_wake` (a store-buffer handshake): either
        // the next `read` sees the writer's record, or the writer sees this flag.
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    /// Hands each record written since the last call to `each`, in order, and makes their
    /// room free. An error means the writer broke the ring's rules (the records after the
    /// fault are lost; the ring must be dropped).
    pub(crate) fn read(&mut self, each: &mut dyn FnMut(&[u8])) -> Result<(), String> {
        let written = self.map.word(WRITTEN_AT).load(Ordering::Acquire);
        let pending = written.wrapping_sub(self.read);
        if pending > DATA_WORDS {
            return Err(format!(
                "the writer claims {pending} words are waiting in a ring of {DATA_WORDS}"
            ));
        }
        if pending == 0 {
            return Ok(());
        }
        let mut bytes = Vec::with_capacity(256);
        while self.read != written {
            let len = self.data(self.read);
            let words = words_for(len);
            if len > MAX_RECORD as u64 || 1 + words > written.wrapping_sub(self.read) {
                return Err(format!(
                    "a record of {len} bytes does not fit what was written"
                ));
            }
            bytes.clear();
            for i in 0..words {
                bytes.extend_from_slice(&self.data(self.read.wrapping_add(1 + i)).to_le_bytes());
            }
            bytes.truncate(len as usize);
            self.read = self.read.wrapping_add(1 + words);
            each(&bytes);
        }
        self.map.word(READ_AT).store(self.read, Ordering::Release);
        Ok(())
    }

    fn data(&self, at: u64) -> u64 {
        self.map
            .word(HEADER_WORDS + (at % DATA_WORDS) as usize)
            .load(Ordering::Relaxed)
    }
}

/// The writing side, in another process of the host.
pub(crate) struct Writer {
    map: Mapping,
    /// Where the next record goes (words since the ring was made).
    written: u64,
}

impl Writer {
    /// Opens the ring at `at`, which must start with `token`.
    pub(crate) fn open(at: RingAddress, token: Token) -> io::Result<Writer> {
        let path = format!("/proc/{}/fd/{}", at.pid, at.fd);
        let is_ring = |m: std::fs::Metadata| m.is_file() && m.len() == (RING_WORDS * 8) as u64;
        // Looked at before it is opened: opening a device or a pipe may have effects.
        if !is_ring(std::fs::metadata(&path)?) {
            return Err(io::Error::other("not a ring: another kind or size of file"));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)?;
        if !is_ring(file.metadata()?) {
            return Err(io::Error::other("not a ring: another kind or size of file"));
        }
        let map = Mapping::new(&file)?;
        let ours = [TOKEN_AT, TOKEN_AT + 1]
            .map(|w| map.word(w).load(Ordering::Relaxed).to_le_bytes())
            .concat();
        if map.word(MAGIC_AT).load(Ordering::Acquire) != MAGIC
            || ours != token
            || map.word(SIZE_AT).load(Ordering::Relaxed) != DATA_WORDS
        {
            return Err(io::Error::other("not the ring this worker was given"));
        }
        let written = map.word(WRITTEN_AT).load(Ordering::Relaxed);
        Ok(Writer { map, written })
    }

    /// Appends `record`; false if it is larger than [`MAX_RECORD`] or the ring has no room
    /// for it now.
    pub(crate) fn write(&mut self, record: &[u8]) -> bool {
        if record.len() > MAX_RECORD {
            return false;
        }
        let words = words_for(record.len() as u64);
        let read = self.map.word(READ_AT).load(Ordering::Acquire);
        let used = self.written.wrapping_sub(read);
        if used > DATA_WORDS || DATA_WORDS - used < 1 + words {
            return false;
        }
        self.put(self.written, record.len() as u64);
        for (i, chunk) in record.chunks(8).enumerate() {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.put(
                self.written.wrapping_add(1 + i as u64),
                u64::from_le_bytes(word),
            );
        }
        self.written = self.written.wrapping_add(1 + words);
        self.map
            .word(WRITTEN_AT)
            .store(self.written, Ordering::Release);
        true
    }

    /// Whether the reader asked to be woken after a record (sequentially consistent with
    /// [`Reader::set_wake`] and the records written before: either the reader reads the
    /// record after turning waking on, or this sees it on).
    pub(crate) fn wants_wake(&self) -> bool {
        std::sync::atomic::fence(Ordering::SeqCst);
        self.map.word(WAKE_AT).load(Ordering::Relaxed) != 0
    }

    fn put(&self, at: u64, word: u64) {
        self.map
            .word(HEADER_WORDS + (at % DATA_WORDS) as usize)
            .store(word, Ordering::Relaxed);
    }
}

/// Words that hold `len` bytes.
fn words_for(len: u64) -> u64 {
    len.div_ceil(8)
}

/// A ring's memory, mapped shared.
struct Mapping {
    base: std::ptr::NonNull<AtomicU64>,
}

// SAFETY: the memory is only ever accessed through atomics.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(file: &std::fs::File) -> io::Result<Mapping> {
        Ok(Mapping {
            base: imp::map(file, RING_WORDS * 8)?.cast(),
        })
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < RING_WORDS);
        // SAFETY: the mapping holds `RING_WORDS` aligned words for as long as `self` lives
        // (its file is sealed against shrinking), and every access to them is atomic.
        unsafe { &*self.base.as_ptr().add(i) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        imp::unmap(self.base.cast(), RING_WORDS * 8);
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::ptr::NonNull;

    /// A memory file of `bytes` bytes that can neither shrink nor grow.
    pub(super) fn memory_file(bytes: usize) -> io::Result<std::fs::File> {
        // SAFETY: the name is a NUL-terminated string.
        let fd = unsafe {
            libc::memfd_create(
                c"dagger-notes".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let file = unsafe { std::fs::File::from_raw_fd(fd) };
        file.set_len(bytes as u64)?;
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: plain `fcntl` on a descriptor this function owns.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(file)
    }

    pub(super) fn map(file: &std::fs::File, bytes: usize) -> io::Result<NonNull<u8>> {
        // SAFETY: a new shared mapping of the file; nothing else is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mapped at address 0"))
    }

    pub(super) fn unmap(p: NonNull<u8>, bytes: usize) {
        // SAFETY: `p` is a mapping of `bytes` bytes made by `map`, no longer used.
        unsafe { libc::munmap(p.as_ptr().cast(), bytes) };
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::io;
    use std::ptr::NonNull;

    fn unsupported() -> io::Error {
        io::Error::new(io::ErrorKind::Unsupported, "shared rings are Linux-only")
    }

    pub(super) fn memory_file(_: usize) -> io::Result<std::fs::File> {
        Err(unsupported())
    }

    pub(super) fn map(_: &std::fs::File, _: usize) -> io::Result<NonNull<u8>> {
        Err(unsupported())
    }

    pub(super) fn unmap(_: NonNull<u8>, _: usize) {}
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn read_all(r: &mut Reader) -> Result<Vec<Vec<u8>>, String> {
        let mut got = Vec::new();
        r.read(&mut |b| got.push(b.to_vec()))?;
        Ok(got)
    }

    #[test]
    fn records_arrive_in_order_across_the_end_of_the_ring() {
        let mut r = Reader::create([3; 16]).unwrap();
        let mut w = Writer::open(r.address(), [3; 16]).unwrap();
        assert!(read_all(&mut r).unwrap().is_empty());
        // Enough rounds to wrap around the data many times, with every length mod 8.
        for round in 0..200u32 {
            let records: Vec<Vec<u8>> = (0..20u32)
                .map(|i| vec![(round + i) as u8; ((round * 7 + i * 13) % 300) as usize])
                .collect();
            for rec in &records {
                assert!(w.write(rec));
            }
            assert_eq!(read_all(&mut r).unwrap(), records);
        }
    }

    #[test]
    fn a_full_ring_refuses_records_until_they_are_read() {
        let mut r = Reader::create([1; 16]).unwrap();
        let mut w = Writer::open(r.address(), [1; 16]).unwrap();
        let record = vec![9u8; MAX_RECORD];
        let fits = (DATA_WORDS / (1 + MAX_RECORD as u64 / 8)) as usize;
        for _ in 0..fits {
            assert!(w.write(&record));
        }
        assert!(!w.write(&record));
        assert!(!w.write(&vec![0u8; MAX_RECORD + 1]));
        assert_eq!(read_all(&mut r).unwrap().len(), fits);
        assert!(w.write(&record));
    }

    #[test]
    fn the_writer_needs_the_token_and_a_ring() {
        let r = Reader::create([5; 16]).unwrap();
        assert!(Writer::open(r.address(), [6; 16]).is_err());
        let not_a_ring = RingAddress {
            pid: std::process::id(),
            fd: 0,
        };
        assert!(Writer::open(not_a_ring, [5; 16]).is_err());
        let gone = RingAddress {
            pid: u32::MAX,
            fd: 3,
        };
        assert!(Writer::open(gone, [5; 16]).is_err());
    }

    #[test]
    fn waking_is_asked_for_by_the_reader() {
        let r = Reader::create([2; 16]).unwrap();
        let w = Writer::open(r.address(), [2; 16]).unwrap();
        assert!(!w.wants_wake());
        r.set_wake(true);
        assert!(w.wants_wake());
        r.set_wake(false);
        assert!(!w.wants_wake());
    }

    #[test]
    fn a_writer_breaking_the_rules_is_refused_not_followed() {
        let mut r = Reader::create([4; 16]).unwrap();
        let w = Writer::open(r.address(), [4; 16]).unwrap();
        // More written than the ring holds.
        w.map
            .word(WRITTEN_AT)
            .store(DATA_WORDS + 1, Ordering::Release);
        assert!(read_all(&mut r).is_err());
        // A record longer than what was written.
        let mut r = Reader::create([4; 16]).unwrap();
        let w = Writer::open(r.address(), [4; 16]).unwrap();
        w.put(0, 64);
        w.map.word(WRITTEN_AT).store(2, Ordering::Release);
        assert!(read_all(&mut r).is_err());
        // A record longer than any record may be.
        let mut r = Reader::create([4; 16]).unwrap();
        let w = Writer::open(r.address(), [4; 16]).unwrap();
        w.put(0, u64::MAX);
        w.map.word(WRITTEN_AT).store(100, Ordering::Release);
        assert!(read_all(&mut r).is_err());
    }
}
