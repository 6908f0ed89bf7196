//! The safe face of DPDK: EAL, mempools, mbufs, ports and queues.
//!
//! This is the only module of the dataplane allowed to use `unsafe`. Every
//! type here owns what it wraps: an [`Mbuf`] frees its buffer when dropped,
//! an [`RxQueue`]/[`TxQueue`] is the single handle to one queue of a port
//! (so two threads can never poll the same queue), and errors carry DPDK's
//! own `rte_strerror` text.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use dpdk_sys as ffi;

/// DPDK's RSS hash-function flags (`RTE_ETH_RSS_*`, macros bindgen cannot
/// evaluate).
pub mod rss {
    /// IPv4 header (addresses only).
    pub const IPV4: u64 = 1 << 2;
    /// Fragmented IPv4.
    pub const FRAG_IPV4: u64 = 1 << 3;
    /// IPv4 + TCP ports.
    pub const NONFRAG_IPV4_TCP: u64 = 1 << 4;
    /// IPv4 + UDP ports.
    pub const NONFRAG_IPV4_UDP: u64 = 1 << 5;
    /// IPv4 + SCTP ports.
    pub const NONFRAG_IPV4_SCTP: u64 = 1 << 6;
    /// Other IPv4 protocols.
    pub const NONFRAG_IPV4_OTHER: u64 = 1 << 7;
    /// Everything tandem hashes on.
    pub const TANDEM: u64 = IPV4
        | FRAG_IPV4
        | NONFRAG_IPV4_TCP
        | NONFRAG_IPV4_UDP
        | NONFRAG_IPV4_SCTP
        | NONFRAG_IPV4_OTHER;
}

pub use crate::flow::SYMMETRIC_RSS_KEY;

/// Errors of the DPDK layer, with DPDK's explanation where there is one.
#[derive(Debug, thiserror::Error)]
pub enum DpdkError {
    /// `rte_eal_init` failed.
    #[error("DPDK EAL initialisation failed: {msg} (errno {code}). Check the EAL arguments {args:?}, hugepages and that no other process uses the same --file-prefix")]
    EalInit {
        /// rte_errno.
        code: i32,
        /// rte_strerror text.
        msg: String,
        /// The arguments given.
        args: Vec<String>,
    },
    /// The EAL can only be initialised once per process.
    #[error("the DPDK EAL is already initialised in this process")]
    EalAlreadyInitialised,
    /// An argument contained a NUL byte.
    #[error("EAL argument {0:?} contains a NUL byte")]
    BadArgument(String),
    /// A mempool could not be created.
    #[error("cannot create mempool {name} of {size} mbufs: {msg}. Lower dataplane.mbufs or give the node more memory (eal.memory_mb / hugepages)")]
    Mempool {
        /// Pool name.
        name: String,
        /// Requested size.
        size: u32,
        /// rte_strerror text.
        msg: String,
    },
    /// No DPDK port has this name.
    #[error("no DPDK port named {0:?}: the device did not probe (DPDK's messages on stderr say why; a PCI device must be bound to vfio-pci, an af_packet vdev's iface must exist)")]
    NoSuchPort(String),
    /// A ring could not be created.
    #[error("cannot create ring {name} of {size} packets: {msg}. Give the node more memory (eal.memory_mb / hugepages)")]
    Ring {
        /// Ring name.
        name: String,
        /// Requested size.
        size: u32,
        /// rte_strerror text.
        msg: String,
    },
    /// A port operation failed.
    #[error("port {port} ({name}): {op} failed: {msg} ({code})")]
    Port {
        /// Port id.
        port: u16,
        /// Device name.
        name: String,
        /// What was being done.
        op: &'static str,
        /// Negative errno.
        code: i32,
        /// rte_strerror text.
        msg: String,
    },
    /// The calling thread could not be registered with DPDK.
    #[error("cannot register the thread with DPDK: {0}")]
    ThreadRegister(String),
}

/// DPDK's text for an errno value (positive or negative).
pub fn strerror(code: i32) -> String {
    // SAFETY: rte_strerror accepts any value and returns a pointer to a
    // static or thread-local NUL-terminated string.
    let ptr = unsafe { ffi::rte_strerror(code.abs()) };
    if ptr.is_null() {
        return format!("error {code}");
    }
    // SAFETY: non-null, NUL-terminated, valid until the next call on this
    // thread; we copy it at once.
    unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned()
}

fn last_errno() -> i32 {
    // SAFETY: reads the calling thread's rte_errno.
    unsafe { ffi::tandem_errno() }
}

/// Sends DPDK's log to stderr. Without it the Linux EAL writes its log to
/// stdout (and syslog), mixed with what a tool prints there for its
/// consumer (tandem-gen's JSON lines). Call before [`Eal::init`] to catch
/// the EAL's own start-up messages; returns `false` if DPDK refused.
pub fn log_to_stderr() -> bool {
    // SAFETY: hands DPDK libc's stderr stream, valid for the whole process;
    // rte_openlog_stream only stores the pointer (no EAL needed).
    unsafe { ffi::tandem_log_to_stderr() == 0 }
}

static EAL_UP: AtomicBool = AtomicBool::new(false);
static EAL_READY: AtomicBool = AtomicBool::new(false);

/// Proof that the EAL is initialised; everything else takes `&Eal`.
#[derive(Debug)]
pub struct Eal {
    _private: (),
}

impl Eal {
    /// Initialises the EAL with `args` (`args[0]` is the program name).
    /// Can succeed once per process.
    pub fn init(args: &[String]) -> Result<Eal, DpdkError> {
        if EAL_UP.swap(true, Ordering::SeqCst) {
            return Err(DpdkError::EalAlreadyInitialised);
        }
        let cargs: Vec<CString> = args
            .iter()
            .map(|a| CString::new(a.as_str()).map_err(|_| DpdkError::BadArgument(a.clone())))
            .collect::<Result<_, _>>()?;
        // rte_eal_init may permute argv: give it a private array of
        // pointers to strings that outlive the call (the EAL keeps some).
        let mut argv: Vec<*mut std::os::raw::c_char> =
            cargs.iter().map(|c| c.as_ptr() as *mut _).collect();
        let argc = argv.len() as i32;
        // The EAL pins the calling thread to its first lcore's CPUs; every
        // thread started later (unpinned workers, the sync core, helper
        // threads) would inherit that one CPU. Keep the process's own set
        // and give it back to this thread afterwards: what is pinned is
        // what the configuration pins.
        // SAFETY: cpu_set_t is plain data; zeroed is its empty set.
        let mut cpus: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid out pointer of the size given; 0 = this thread.
        let have_cpus = unsafe {
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut cpus)
        } == 0;
        // SAFETY: argv holds argc valid NUL-terminated strings; the strings
        // are leaked below so pointers the EAL keeps stay valid.
        let rc = unsafe { ffi::rte_eal_init(argc, argv.as_mut_ptr()) };
        std::mem::forget(cargs);
        std::mem::forget(argv);
        if have_cpus {
            // SAFETY: cpus was filled by sched_getaffinity above.
            unsafe {
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &cpus);
            }
        }
        if rc < 0 {
            let code = last_errno();
            return Err(DpdkError::EalInit {
                code,
                msg: strerror(code),
                args: args.to_vec(),
            });
        }
        EAL_READY.store(true, Ordering::SeqCst);
        Ok(Eal { _private: () })
    }

    /// TSC ticks per second.
    pub fn tsc_hz(&self) -> u64 {
        // SAFETY: plain query, valid after EAL init.
        unsafe { ffi::rte_get_tsc_hz() }
    }

    /// Number of ports DPDK found (PCI devices and vdevs).
    pub fn port_count(&self) -> u16 {
        // SAFETY: plain query, valid after EAL init.
        unsafe { ffi::rte_eth_dev_count_avail() }
    }

    /// Finds the port of a device by its name: a PCI address, or the vdev
    /// name (the part of a `--vdev` spec before the first comma).
    pub fn port_by_name(&self, name: &str) -> Result<u16, DpdkError> {
        let c = CString::new(name).map_err(|_| DpdkError::NoSuchPort(name.to_owned()))?;
        let mut port = 0u16;
        // SAFETY: c is a valid C string, port a valid out pointer.
        let rc = unsafe { ffi::rte_eth_dev_get_port_by_name(c.as_ptr(), &mut port) };
        if rc != 0 {
            return Err(DpdkError::NoSuchPort(name.to_owned()));
        }
        Ok(port)
    }

    /// Releases what the EAL holds (hugepages, shared files). Call after
    /// every port is closed and every mbuf freed.
    pub fn cleanup(self) {
        EAL_READY.store(false, Ordering::SeqCst);
        // SAFETY: consumes the EAL proof, so no wrapper can be created
        // afterwards; callers close ports and drop pools first.
        unsafe {
            ffi::rte_eal_cleanup();
        }
    }
}

/// Registers the calling (non-EAL) thread with DPDK so it gets an lcore id
/// and per-lcore mempool caches. Returns the lcore id.
pub fn register_current_thread() -> Result<u32, DpdkError> {
    if !EAL_READY.load(Ordering::SeqCst) {
        return Err(DpdkError::ThreadRegister(
            "the EAL is not initialised".into(),
        ));
    }
    // SAFETY: the EAL is initialised; may be called from any thread.
    let rc = unsafe { ffi::rte_thread_register() };
    if rc != 0 {
        return Err(DpdkError::ThreadRegister(strerror(last_errno())));
    }
    Ok(lcore_id())
}

/// Puts the calling thread in the real-time round-robin class at
/// `priority` (1..=99) so that it runs as soon as it wakes, ahead of busy
/// poll-mode workers on a shared core (the HA control thread: heartbeats
/// on time). Needs root or CAP_SYS_NICE; the error says why not.
pub fn set_current_thread_realtime(priority: u8) -> Result<(), String> {
    let prio = i32::from(priority.clamp(1, 99));
    // SAFETY: plain call on the calling thread; no pointers cross.
    let rc = unsafe { ffi::tandem_thread_set_realtime(prio) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(rc).to_string())
    }
}

/// The DPDK lcore id of the calling thread (`u32::MAX` for an unregistered
/// thread).
pub fn lcore_id() -> u32 {
    // SAFETY: reads a thread-local.
    unsafe { ffi::tandem_lcore_id() }
}

/// The time-stamp counter.
#[inline]
pub fn tsc() -> u64 {
    // SAFETY: reads the CPU's TSC.
    unsafe { ffi::tandem_tsc() }
}

/// Asks the CPU to bring the cache line of `x` in (a hint: no effect on
/// what the program computes). The burst lookups use it to overlap the
/// cache misses of a burst's connections.
#[inline(always)]
pub fn prefetch<T>(x: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults, whatever the address; x is a valid
    // reference anyway. SSE is part of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            (x as *const T).cast::<i8>(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

/// A CPU pause hint for spin loops.
#[inline]
pub fn pause() {
    // SAFETY: a pause instruction.
    unsafe { ffi::tandem_pause() }
}

/// A pool of packet buffers.
#[derive(Debug)]
pub struct Mempool {
    ptr: NonNull<ffi::rte_mempool>,
    name: String,
}

// SAFETY: DPDK mempools are multi-producer/multi-consumer safe; the
// pointer is only used through thread-safe DPDK calls.
unsafe impl Send for Mempool {}
// SAFETY: as above: every method takes &self and calls MT-safe functions.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// Creates a pool of `size` mbufs of the default data room.
    pub fn new(_eal: &Eal, name: &str, size: u32, cache: u32) -> Result<Arc<Mempool>, DpdkError> {
        let err = |msg: String| DpdkError::Mempool {
            name: name.to_owned(),
            size,
            msg,
        };
        let c = CString::new(name).map_err(|_| err("name contains NUL".into()))?;
        // SAFETY: valid C string; other arguments are plain values.
        let ptr = unsafe {
            ffi::rte_pktmbuf_pool_create(
                c.as_ptr(),
                size,
                cache,
                0,
                ffi::RTE_MBUF_DEFAULT_BUF_SIZE as u16,
                ffi::SOCKET_ID_ANY,
            )
        };
        let ptr = NonNull::new(ptr).ok_or_else(|| err(strerror(last_errno())))?;
        Ok(Arc::new(Mempool {
            ptr,
            name: name.to_owned(),
        }))
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Allocates one mbuf, or `None` when the pool is exhausted.
    #[inline]
    pub fn alloc(&self) -> Option<Mbuf> {
        // SAFETY: the pool pointer is valid for self's lifetime.
        let m = unsafe { ffi::tandem_mbuf_alloc(self.ptr.as_ptr()) };
        NonNull::new(m).map(|ptr| Mbuf { ptr })
    }

    /// Allocates `n` (<= [`MAX_BURST`]) mbufs at once and appends them to
    /// `out`, or none at all (returns `false`) when the pool cannot give
    /// that many. One call instead of `n`: what a traffic generator needs
    /// to fill a burst.
    #[inline]
    pub fn alloc_bulk(&self, out: &mut Vec<Mbuf>, n: usize) -> bool {
        let n = n.min(MAX_BURST);
        if n == 0 {
            return true;
        }
        let mut raw = [std::ptr::null_mut::<ffi::rte_mbuf>(); MAX_BURST];
        // SAFETY: the pool pointer is valid for self's lifetime; raw has
        // room for n pointers. On success DPDK fills all n with freshly
        // reset mbufs we now own; on failure it fills none.
        let rc =
            unsafe { ffi::tandem_mbuf_alloc_bulk(self.ptr.as_ptr(), raw.as_mut_ptr(), n as u32) };
        if rc != 0 {
            return false;
        }
        out.extend(
            raw[..n]
                .iter()
                .filter_map(|&p| NonNull::new(p))
                .map(|ptr| Mbuf { ptr }),
        );
        true
    }

    /// Mbufs currently free.
    pub fn available(&self) -> u32 {
        // SAFETY: valid pool.
        unsafe { ffi::rte_mempool_avail_count(self.ptr.as_ptr()) }
    }

    /// Mbufs currently handed out.
    pub fn in_use(&self) -> u32 {
        // SAFETY: valid pool.
        unsafe { ffi::rte_mempool_in_use_count(self.ptr.as_ptr()) }
    }

    fn raw(&self) -> *mut ffi::rte_mempool {
        self.ptr.as_ptr()
    }
}

impl Drop for Mempool {
    fn drop(&mut self) {
        // SAFETY: the Arc is gone, so no port or mbuf wrapper refers to the
        // pool any more (ports hold an Arc until closed).
        unsafe { ffi::rte_mempool_free(self.ptr.as_ptr()) }
    }
}

/// One owned packet buffer (single segment as far as tandem is concerned:
/// the data room of 2 KiB holds a 1500-byte MTU frame).
#[derive(Debug)]
pub struct Mbuf {
    ptr: NonNull<ffi::rte_mbuf>,
}

// SAFETY: an Mbuf is uniquely owned; moving it to another thread moves
// the ownership (DPDK frees to the right pool from any thread).
unsafe impl Send for Mbuf {}

impl Mbuf {
    /// The bytes of the first segment.
    #[inline]
    pub fn data(&self) -> &[u8] {
        // SAFETY: the data pointer and data_len describe initialised bytes
        // of the buffer this Mbuf owns.
        unsafe {
            let p = ffi::tandem_mbuf_data(self.ptr.as_ptr());
            std::slice::from_raw_parts(p, ffi::tandem_mbuf_data_len(self.ptr.as_ptr()) as usize)
        }
    }

    /// The bytes of the first segment, mutable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: as data(), and &mut self guarantees exclusive access.
        unsafe {
            let p = ffi::tandem_mbuf_data(self.ptr.as_ptr());
            std::slice::from_raw_parts_mut(p, ffi::tandem_mbuf_data_len(self.ptr.as_ptr()) as usize)
        }
    }

    /// Length of the whole packet (all segments).
    #[inline]
    pub fn pkt_len(&self) -> u32 {
        // SAFETY: valid mbuf.
        unsafe { ffi::tandem_mbuf_pkt_len(self.ptr.as_ptr()) }
    }

    /// Number of segments.
    #[inline]
    pub fn segments(&self) -> u16 {
        // SAFETY: valid mbuf.
        unsafe { ffi::tandem_mbuf_nb_segs(self.ptr.as_ptr()) }
    }

    /// Grows the data by `len` bytes at the tail and returns the new bytes,
    /// or `None` if the tailroom is too small.
    #[inline]
    pub fn append(&mut self, len: u16) -> Option<&mut [u8]> {
        // SAFETY: rte_pktmbuf_append returns NULL or a pointer to `len`
        // bytes inside this mbuf's buffer.
        unsafe {
            let p = ffi::tandem_mbuf_append(self.ptr.as_ptr(), len);
            if p.is_null() {
                None
            } else {
                Some(std::slice::from_raw_parts_mut(p, len as usize))
            }
        }
    }

    /// Shrinks the data by `len` bytes at the tail.
    #[inline]
    pub fn trim(&mut self, len: u16) -> bool {
        // SAFETY: valid mbuf; DPDK checks the length.
        unsafe { ffi::tandem_mbuf_trim(self.ptr.as_ptr(), len) == 0 }
    }

    /// Sets the data length to `len` (within the first segment's room).
    pub fn set_len(&mut self, len: usize) -> bool {
        let cur = self.data().len();
        if len <= cur {
            self.trim((cur - len) as u16)
        } else {
            u16::try_from(len - cur)
                .ok()
                .and_then(|n| self.append(n))
                .is_some()
        }
    }

    /// The port the mbuf was received on.
    #[inline]
    pub fn port(&self) -> u16 {
        // SAFETY: valid mbuf.
        unsafe { ffi::tandem_mbuf_port(self.ptr.as_ptr()) }
    }

    /// Records `port` as the port the mbuf was received on (a worker that
    /// hands a packet to another says where it came in).
    #[inline]
    pub fn set_port(&mut self, port: u16) {
        // SAFETY: valid mbuf, exclusively ours.
        unsafe { ffi::tandem_mbuf_set_port(self.ptr.as_ptr(), port) }
    }

    /// The RSS hash the NIC computed, if it did.
    #[inline]
    pub fn rss_hash(&self) -> Option<u32> {
        let mut valid = 0;
        // SAFETY: valid mbuf and out pointer.
        let h = unsafe { ffi::tandem_mbuf_rss(self.ptr.as_ptr(), &mut valid) };
        (valid != 0).then_some(h)
    }

    fn into_raw(self) -> *mut ffi::rte_mbuf {
        let p = self.ptr.as_ptr();
        std::mem::forget(self);
        p
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: we own the mbuf and nothing else refers to it.
        unsafe { ffi::tandem_mbuf_free(self.ptr.as_ptr()) }
    }
}

/// What the port layer knows about a device.
#[derive(Debug, Clone)]
pub struct PortInfo {
    /// The driver (e.g. `net_af_packet`, `net_ixgbe`).
    pub driver: String,
    /// The device name (PCI address or vdev name).
    pub device: String,
    /// Maximum RX queues.
    pub max_rx_queues: u16,
    /// Maximum TX queues.
    pub max_tx_queues: u16,
    /// RSS hash types the device supports (0: no RSS).
    pub rss_offloads: u64,
    /// RSS key size in bytes.
    pub rss_key_size: u8,
    /// Entries of the RSS redirection table (0: none).
    pub reta_size: u16,
    /// Largest MTU.
    pub max_mtu: u16,
}

/// Link state of a port as the driver reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkState {
    /// Carrier.
    pub up: bool,
    /// Speed in Mbit/s (0 when unknown).
    pub speed_mbps: u32,
    /// Full duplex.
    pub full_duplex: bool,
}

/// Port counters as the driver reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortCounters {
    /// Packets received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets the device dropped because no RX descriptor was free.
    pub rx_missed: u64,
    /// Erroneous received packets.
    pub rx_errors: u64,
    /// Failed transmissions.
    pub tx_errors: u64,
    /// RX mbuf allocation failures.
    pub rx_nombuf: u64,
}

/// How to set a port up.
#[derive(Debug, Clone)]
pub struct PortSetup {
    /// Workers of the node: the port gets one RX and one TX queue per
    /// worker, or as many as the device offers.
    pub queues: u16,
    /// RX descriptors per queue.
    pub rx_descriptors: u16,
    /// TX descriptors per queue.
    pub tx_descriptors: u16,
    /// MTU (0: keep the device's).
    pub mtu: u16,
}

/// How the packets a port receives reach the worker that owns their flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Steering {
    /// One worker: nothing to steer.
    Single,
    /// The NIC's RSS with the symmetric key and a redirection table that
    /// agrees with [`crate::flow::owner_of_hash`] (programmed and read
    /// back): TCP/UDP arrive at their owner; the software dispatch moves
    /// the rest (ICMP, GRE, fragments, ...).
    Rss,
    /// The software dispatch moves every packet that arrived at a worker
    /// that does not own it (why: the device's limits).
    Software(String),
}

impl Steering {
    /// A word for status output: `single`, `rss` or `software`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Steering::Single => "single",
            Steering::Rss => "rss",
            Steering::Software(_) => "software",
        }
    }
}

/// A configured and started port. Workers get its queues through
/// [`Port::take_queues`]; the control thread keeps the `Port` for stats and
/// link state.
#[derive(Debug)]
pub struct Port {
    id: u16,
    name: String,
    info: PortInfo,
    rx_queues: u16,
    tx_queues: u16,
    steering: Steering,
    queues_taken: AtomicBool,
    started: bool,
    _pool: Arc<Mempool>,
}

impl Port {
    /// Looks a device up by name, reads its capabilities, configures one
    /// RX and one TX queue per worker (`setup.queues`) or as many as the
    /// device has, RSS with the symmetric key and the owners' redirection
    /// table where the device can, and starts it.
    pub fn open(
        eal: &Eal,
        device: &str,
        setup: &PortSetup,
        pool: Arc<Mempool>,
    ) -> Result<Port, DpdkError> {
        match Port::open_retrying_start(eal, device, setup, pool)? {
            (port, None) => Ok(port),
            (_, Some(e)) => Err(e),
        }
    }

    /// Like [`Port::open`], but a start that fails leaves a configured
    /// port, returned with the error, for a caller that retries with
    /// [`Port::restart`]: a memif client is turned away while its server
    /// is busy (its one-deep accept queue is full) or not started yet.
    pub fn open_retrying_start(
        eal: &Eal,
        device: &str,
        setup: &PortSetup,
        pool: Arc<Mempool>,
    ) -> Result<(Port, Option<DpdkError>), DpdkError> {
        let id = eal.port_by_name(device)?;
        let info = port_info(id)?;
        let fail = |op: &'static str, code: i32| DpdkError::Port {
            port: id,
            name: info.device.clone(),
            op,
            code,
            msg: strerror(code),
        };
        if info.max_rx_queues == 0 || info.max_tx_queues == 0 {
            return Err(DpdkError::Port {
                port: id,
                name: info.device.clone(),
                op: "queue setup",
                code: -libc::EINVAL,
                msg: format!(
                    "the device offers {} RX / {} TX queues; a data port needs at least one of each",
                    info.max_rx_queues, info.max_tx_queues
                ),
            });
        }
        let workers = setup.queues.max(1);
        let rx_queues = workers.min(info.max_rx_queues);
        let tx_queues = workers.min(info.max_tx_queues);
        // The symmetric key at the device's length (the pattern repeats,
        // so any length is symmetric and hashes 12 bytes the same).
        let key_len = match info.rss_key_size {
            0 => SYMMETRIC_RSS_KEY.len(),
            n => usize::from(n),
        };
        let key: Vec<u8> = (0..key_len)
            .map(|i| if i % 2 == 0 { 0x6d } else { 0x5a })
            .collect();
        let use_rss = rx_queues > 1 && info.rss_offloads != 0;
        let conf = ffi::tandem_port_conf {
            nb_rx_queues: rx_queues,
            nb_tx_queues: tx_queues,
            nb_rx_desc: setup.rx_descriptors,
            nb_tx_desc: setup.tx_descriptors,
            mtu: setup.mtu,
            rss_hf: if use_rss { rss::TANDEM } else { 0 },
            rss_key: key.as_ptr(),
            rss_key_len: key.len() as u8,
        };
        // SAFETY: conf points at a valid struct and key outlives the call
        // (DPDK copies the key); the pool is valid and kept alive by the
        // Port, which the queues' mbufs come from.
        let rc = unsafe { ffi::tandem_port_configure(id, &conf, pool.raw()) };
        if rc != 0 {
            return Err(fail("configure", rc));
        }
        // SAFETY: configured port.
        let rc = unsafe { ffi::rte_eth_dev_start(id) };
        let start_error = (rc != 0).then(|| fail("start", rc));
        if start_error.is_none() {
            // Receiving frames for the port's own MAC only is the normal
            // case; multicast is needed for IPv6 ND/LACP later. Failure is
            // harmless.
            // SAFETY: started port.
            unsafe {
                ffi::rte_eth_allmulticast_enable(id);
            }
        }
        let steering = if workers == 1 {
            Steering::Single
        } else if !use_rss {
            Steering::Software(if rx_queues == 1 {
                "the device has one RX queue".to_string()
            } else {
                "the device has no RSS (its queues are filled by its own rule)".to_string()
            })
        } else {
            match program_rss(id, &info, &key, workers) {
                Ok(()) => Steering::Rss,
                Err(why) => Steering::Software(why),
            }
        };
        let port = Port {
            id,
            name: info.device.clone(),
            info,
            rx_queues,
            tx_queues,
            steering,
            queues_taken: AtomicBool::new(false),
            // Also after a failed start: stopping a stopped port does
            // nothing and the port must be closed.
            started: true,
            _pool: pool,
        };
        Ok((port, start_error))
    }

    /// The DPDK port id.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// The device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device's capabilities.
    pub fn info(&self) -> &PortInfo {
        &self.info
    }

    /// Number of RX queues (at most one per worker).
    pub fn rx_queues(&self) -> u16 {
        self.rx_queues
    }

    /// Number of TX queues (at most one per worker).
    pub fn tx_queues(&self) -> u16 {
        self.tx_queues
    }

    /// How received packets reach their owner.
    pub fn steering(&self) -> &Steering {
        &self.steering
    }

    /// Hands out the RX and TX queue handles, once.
    pub fn take_queues(&self) -> Option<(Vec<RxQueue>, Vec<TxQueue>)> {
        if self.queues_taken.swap(true, Ordering::SeqCst) {
            return None;
        }
        let rx = (0..self.rx_queues)
            .map(|q| RxQueue {
                port: self.id,
                queue: q,
            })
            .collect();
        let tx = (0..self.tx_queues)
            .map(|q| TxQueue {
                port: self.id,
                queue: q,
            })
            .collect();
        Some((rx, tx))
    }

    /// The port's MAC address.
    pub fn mac(&self) -> Result<[u8; 6], DpdkError> {
        let mut mac = [0u8; 6];
        // SAFETY: out buffer of 6 bytes.
        let rc = unsafe { ffi::tandem_port_mac(self.id, mac.as_mut_ptr()) };
        if rc != 0 {
            return Err(self.error("read MAC address", rc));
        }
        Ok(mac)
    }

    /// The driver's view of the link (does not wait).
    pub fn link(&self) -> Result<LinkState, DpdkError> {
        let mut l = ffi::tandem_link::default();
        // SAFETY: valid out pointer.
        let rc = unsafe { ffi::tandem_port_link(self.id, &mut l) };
        if rc != 0 {
            return Err(self.error("read link state", rc));
        }
        Ok(LinkState {
            up: l.up != 0,
            speed_mbps: l.speed_mbps,
            full_duplex: l.full_duplex != 0,
        })
    }

    /// The driver's counters.
    pub fn counters(&self) -> Result<PortCounters, DpdkError> {
        let mut s = ffi::rte_eth_stats::default();
        // SAFETY: valid out pointer.
        let rc = unsafe { ffi::rte_eth_stats_get(self.id, &mut s) };
        if rc != 0 {
            return Err(self.error("read statistics", rc));
        }
        Ok(PortCounters {
            rx_packets: s.ipackets,
            rx_bytes: s.ibytes,
            tx_packets: s.opackets,
            tx_bytes: s.obytes,
            rx_missed: s.imissed,
            rx_errors: s.ierrors,
            tx_errors: s.oerrors,
            rx_nombuf: s.rx_nombuf,
        })
    }

    /// Sets the link administratively up or down (where the driver can).
    pub fn set_link(&self, up: bool) -> Result<(), DpdkError> {
        // SAFETY: started port.
        let rc = unsafe {
            if up {
                ffi::rte_eth_dev_set_link_up(self.id)
            } else {
                ffi::rte_eth_dev_set_link_down(self.id)
            }
        };
        if rc != 0 {
            return Err(self.error("set link", rc));
        }
        Ok(())
    }

    /// Stops and starts the port again, keeping its configuration and
    /// queues. A memif client connects in start and never retries (a
    /// server that is listening but not started yet turns it away): a
    /// restart is its retry. Call it only from the thread that polls the
    /// port's queues, or with every poller stopped, like [`Port::close`].
    pub fn restart(&self) -> Result<(), DpdkError> {
        // SAFETY: the port is configured and started (started is only
        // cleared by shutdown, which consumes or drops self); the caller
        // guarantees that no queue of it is polled during the call.
        let rc = unsafe { ffi::rte_eth_dev_stop(self.id) };
        if rc != 0 {
            return Err(self.error("stop", rc));
        }
        // SAFETY: as above; the queues configured in open are kept by a
        // stop.
        let rc = unsafe { ffi::rte_eth_dev_start(self.id) };
        if rc != 0 {
            return Err(self.error("start", rc));
        }
        Ok(())
    }

    /// Stops and closes the port. Workers must have stopped polling it.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if self.started {
            self.started = false;
            // SAFETY: the caller guarantees no worker polls the port any
            // more (workers are joined before ports are dropped).
            unsafe {
                ffi::rte_eth_dev_stop(self.id);
                ffi::rte_eth_dev_close(self.id);
            }
        }
    }

    fn error(&self, op: &'static str, code: i32) -> DpdkError {
        DpdkError::Port {
            port: self.id,
            name: self.name.clone(),
            op,
            code,
            msg: strerror(code),
        }
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Programs the redirection table of a started RSS port so that it agrees
/// with [`crate::flow::owner_of_hash`], and reads the table and the key
/// back. `Err` says why the port cannot be steered by the NIC.
fn program_rss(id: u16, info: &PortInfo, key: &[u8], workers: u16) -> Result<(), String> {
    if info.rss_key_size == 0 {
        return Err("it takes no RSS key (its hash cannot be the symmetric one)".into());
    }
    let size = usize::from(info.reta_size);
    if size < crate::flow::OWNER_TABLE || !size.is_power_of_two() || size > 2048 {
        return Err(format!(
            "its redirection table has {size} entries (needs a power of two from {} to 2048)",
            crate::flow::OWNER_TABLE
        ));
    }
    let table: Vec<u16> = (0..size)
        .map(|i| crate::flow::reta_entry(i, usize::from(workers)))
        .collect();
    // SAFETY: table holds `size` entries.
    let rc = unsafe { ffi::tandem_port_reta_set(id, table.as_ptr(), size as u16) };
    if rc != 0 {
        return Err(format!(
            "programming its redirection table failed: {}",
            strerror(rc)
        ));
    }
    let mut back = vec![0u16; size];
    // SAFETY: back has room for `size` entries.
    let rc = unsafe { ffi::tandem_port_reta_get(id, back.as_mut_ptr(), size as u16) };
    if rc != 0 {
        return Err(format!(
            "reading its redirection table back failed: {}",
            strerror(rc)
        ));
    }
    if back != table {
        return Err("its redirection table reads back different from what was programmed".into());
    }
    let mut got = vec![0u8; key.len().max(64)];
    let mut hf = 0u64;
    // SAFETY: got has room for got.len() bytes; hf is a valid out pointer.
    let n = unsafe { ffi::tandem_port_rss_key_get(id, got.as_mut_ptr(), got.len() as u8, &mut hf) };
    if n < 0 {
        return Err(format!("reading its RSS key back failed: {}", strerror(n)));
    }
    if got.get(..key.len()) != Some(key) {
        return Err("its RSS key reads back different from the symmetric key".into());
    }
    if hf & (rss::NONFRAG_IPV4_TCP | rss::NONFRAG_IPV4_UDP)
        != rss::NONFRAG_IPV4_TCP | rss::NONFRAG_IPV4_UDP
    {
        return Err(format!(
            "it does not hash IPv4 TCP and UDP ports (hash types {hf:#x})"
        ));
    }
    Ok(())
}

fn port_info(id: u16) -> Result<PortInfo, DpdkError> {
    let mut i = ffi::tandem_port_info::default();
    // SAFETY: valid out pointer.
    let rc = unsafe { ffi::tandem_port_info(id, &mut i) };
    if rc != 0 {
        return Err(DpdkError::Port {
            port: id,
            name: String::new(),
            op: "read device info",
            code: rc,
            msg: strerror(rc),
        });
    }
    let text = |b: &[std::os::raw::c_char]| {
        let bytes: Vec<u8> = b
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Ok(PortInfo {
        driver: text(&i.driver_name),
        device: text(&i.device_name),
        max_rx_queues: i.max_rx_queues,
        max_tx_queues: i.max_tx_queues,
        rss_offloads: i.flow_type_rss_offloads,
        rss_key_size: i.hash_key_size,
        reta_size: i.reta_size,
        max_mtu: i.max_mtu,
    })
}

/// Maximum burst size any queue call handles.
pub const MAX_BURST: usize = 256;

/// The one handle to RX queue `queue` of a port. Not `Clone`: whoever holds
/// it is the only poller of that queue.
#[derive(Debug)]
pub struct RxQueue {
    port: u16,
    queue: u16,
}

impl RxQueue {
    /// The port id.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The queue index.
    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// Receives up to `max` (<= MAX_BURST) packets into `out`; returns how
    /// many arrived.
    #[inline]
    pub fn rx_burst(&mut self, out: &mut Vec<Mbuf>, max: usize) -> usize {
        let mut raw = [std::ptr::null_mut::<ffi::rte_mbuf>(); MAX_BURST];
        let max = max.min(MAX_BURST);
        // SAFETY: this handle is the queue's only poller; raw has room for
        // max pointers.
        let n = unsafe { ffi::tandem_rx_burst(self.port, self.queue, raw.as_mut_ptr(), max as u16) }
            as usize;
        // The driver hands over ownership of n valid (non-null) mbufs.
        out.extend(
            raw[..n]
                .iter()
                .filter_map(|&p| NonNull::new(p))
                .map(|ptr| Mbuf { ptr }),
        );
        n
    }
}

/// The one handle to TX queue `queue` of a port, with its own buffer of
/// pending packets.
#[derive(Debug)]
pub struct TxQueue {
    port: u16,
    queue: u16,
}

impl TxQueue {
    /// The port id.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The queue index.
    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// Sends as many packets of `pkts` as the queue takes, removing them
    /// from the front of `pkts`; returns how many were sent. What is left
    /// stays owned by the caller.
    #[inline]
    pub fn tx_burst(&mut self, pkts: &mut Vec<Mbuf>) -> usize {
        let mut sent_total = 0;
        while !pkts.is_empty() {
            let chunk = pkts.len().min(MAX_BURST);
            let mut raw = [std::ptr::null_mut::<ffi::rte_mbuf>(); MAX_BURST];
            for (slot, m) in raw.iter_mut().zip(pkts.iter()) {
                *slot = m.ptr.as_ptr();
            }
            // SAFETY: this handle is the queue's only user; raw holds
            // `chunk` valid mbufs we own. The driver takes ownership of
            // the first `sent`.
            let sent = unsafe {
                ffi::tandem_tx_burst(self.port, self.queue, raw.as_mut_ptr(), chunk as u16)
            } as usize;
            for m in pkts.drain(..sent) {
                // Ownership went to the driver.
                let _ = m.into_raw();
            }
            sent_total += sent;
            if sent < chunk {
                break;
            }
        }
        sent_total
    }
}

// ---- Rings of mbufs between workers ----

/// A lock-free ring of mbufs (DPDK's `rte_ring`): any number of threads
/// put packets in through a shared [`MbufRing`], exactly one takes them
/// out through its [`RingConsumer`]. The workers' handoff uses it.
#[derive(Debug)]
pub struct MbufRing {
    ptr: NonNull<ffi::rte_ring>,
    capacity: usize,
}

// SAFETY: the ring is multi-producer safe (created without RING_F_SP_ENQ),
// and the single consumer is enforced by RingConsumer not being Clone.
unsafe impl Send for MbufRing {}
// SAFETY: as above; enqueue through &self is the MP-safe operation.
unsafe impl Sync for MbufRing {}

/// The one handle that takes packets out of an [`MbufRing`].
#[derive(Debug)]
pub struct RingConsumer {
    ring: Arc<MbufRing>,
}

impl MbufRing {
    /// Creates a ring named `name` (unique in the process, at most 29
    /// bytes) holding up to `capacity` packets (rounded up to a power of
    /// two, minus one).
    pub fn create(
        _eal: &Eal,
        name: &str,
        capacity: usize,
    ) -> Result<(Arc<MbufRing>, RingConsumer), DpdkError> {
        let cname = CString::new(name).map_err(|_| DpdkError::BadArgument(name.to_string()))?;
        let count = capacity.max(2).next_power_of_two() as u32;
        // SAFETY: EAL initialised (we hold &Eal); cname is a valid C string.
        let ptr = unsafe {
            ffi::rte_ring_create(
                cname.as_ptr(),
                count,
                ffi::SOCKET_ID_ANY,
                ffi::RING_F_SC_DEQ,
            )
        };
        let ptr = NonNull::new(ptr).ok_or_else(|| {
            let code = last_errno();
            DpdkError::Ring {
                name: name.to_string(),
                size: count,
                msg: strerror(code),
            }
        })?;
        let ring = Arc::new(MbufRing {
            ptr,
            capacity: count as usize - 1,
        });
        Ok((ring.clone(), RingConsumer { ring }))
    }

    /// Packets the ring holds at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Packets in the ring now.
    pub fn len(&self) -> usize {
        // SAFETY: valid ring.
        unsafe { ffi::tandem_ring_count(self.ptr.as_ptr()) as usize }
    }

    /// True when the ring holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Puts as many packets of `pkts` as fit, taken from its front;
    /// returns how many. What did not fit stays in `pkts`.
    pub fn enqueue(&self, pkts: &mut Vec<Mbuf>) -> usize {
        let mut total = 0;
        while !pkts.is_empty() {
            let chunk = pkts.len().min(MAX_BURST);
            let mut raw = [std::ptr::null_mut::<std::os::raw::c_void>(); MAX_BURST];
            for (slot, m) in raw.iter_mut().zip(pkts.iter()) {
                *slot = m.ptr.as_ptr().cast();
            }
            // SAFETY: MP-safe enqueue of `chunk` valid pointers we own; the
            // ring takes ownership of the first `n`.
            let n = unsafe {
                ffi::tandem_ring_enqueue_burst(self.ptr.as_ptr(), raw.as_ptr(), chunk as u32)
            } as usize;
            for m in pkts.drain(..n) {
                let _ = m.into_raw();
            }
            total += n;
            if n < chunk {
                break;
            }
        }
        total
    }

    fn dequeue_raw(&self, out: &mut Vec<Mbuf>, max: usize) -> usize {
        let mut raw = [std::ptr::null_mut::<std::os::raw::c_void>(); MAX_BURST];
        let max = max.min(MAX_BURST);
        // SAFETY: the caller is the single consumer; raw has room for max.
        let n = unsafe {
            ffi::tandem_ring_dequeue_burst(self.ptr.as_ptr(), raw.as_mut_ptr(), max as u32)
        } as usize;
        out.extend(
            raw[..n]
                .iter()
                .filter_map(|&p| NonNull::new(p.cast::<ffi::rte_mbuf>()))
                .map(|ptr| Mbuf { ptr }),
        );
        n
    }
}

impl RingConsumer {
    /// Takes up to `max` (<= MAX_BURST) packets into `out`; returns how
    /// many.
    #[inline]
    pub fn dequeue(&mut self, out: &mut Vec<Mbuf>, max: usize) -> usize {
        self.ring.dequeue_raw(out, max)
    }

    /// The ring.
    pub fn ring(&self) -> &Arc<MbufRing> {
        &self.ring
    }
}

impl Drop for MbufRing {
    fn drop(&mut self) {
        // Free what is still queued (nobody else holds the ring now).
        let mut left = Vec::new();
        while self.dequeue_raw(&mut left, MAX_BURST) > 0 {
            left.clear();
        }
        // SAFETY: the last handle is gone; nothing uses the ring.
        unsafe { ffi::rte_ring_free(self.ptr.as_ptr()) }
    }
}

// ---- Packet classification (librte_acl) ----

/// The highest rule priority librte_acl accepts (`RTE_ACL_MAX_PRIORITY`).
pub const ACL_MAX_PRIORITY: i32 = (1 << 29) - 1;

/// Why a classification context could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    /// A rule is outside what librte_acl accepts.
    #[error("classifier rule {index} is invalid: {why}")]
    BadRule {
        /// Position of the rule in the slice given.
        index: usize,
        /// What is wrong.
        why: &'static str,
    },
    /// A librte_acl call failed.
    #[error("packet classifier: {op} failed: {msg} ({code}). With many rules give the node more memory (eal.memory_mb / hugepages)")]
    Dpdk {
        /// What was being done.
        op: &'static str,
        /// Negative errno.
        code: i32,
        /// rte_strerror text.
        msg: String,
    },
}

/// One rule of an [`AclContext`]: every field must match; `None` and full
/// ranges match anything. Addresses are prefixes, ports inclusive ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AclRule {
    /// IP protocol, or any.
    pub proto: Option<u8>,
    /// Source prefix (address, length 0..=32).
    pub src: (std::net::Ipv4Addr, u8),
    /// Destination prefix.
    pub dst: (std::net::Ipv4Addr, u8),
    /// Source port range (tandem puts the ICMP type here for ICMP).
    pub sport: (u16, u16),
    /// Destination port range.
    pub dport: (u16, u16),
    /// Input DPDK port, or any.
    pub in_port: Option<u16>,
    /// Output DPDK port, or any.
    pub out_port: Option<u16>,
    /// 1..=[`ACL_MAX_PRIORITY`]; of several matching rules the highest wins.
    pub priority: i32,
    /// Returned for a match; must not be 0 (0 means "no match").
    pub userdata: u32,
}

/// One classification input, already in the byte order and layout the
/// context reads.
#[derive(Clone, Copy, Debug, Default)]
#[repr(transparent)]
pub struct AclKey(ffi::tandem_acl_key);

impl AclKey {
    /// The key of a packet (or of a query about one).
    #[inline]
    pub fn new(
        proto: u8,
        src: std::net::Ipv4Addr,
        dst: std::net::Ipv4Addr,
        sport: u16,
        dport: u16,
        in_port: u16,
        out_port: u16,
    ) -> AclKey {
        AclKey(ffi::tandem_acl_key {
            proto,
            pad: [0; 3],
            src: u32::from(src).to_be(),
            dst: u32::from(dst).to_be(),
            sport: sport.to_be(),
            dport: dport.to_be(),
            in_port: in_port.to_be(),
            out_port: out_port.to_be(),
        })
    }
}

static ACL_SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A built, immutable librte_acl context: multi-field classification whose
/// cost grows with the depth of the trie, not with the number of rules.
/// Freed when dropped. Classification only reads the context, so it is
/// shared between workers (`Send + Sync`).
#[derive(Debug)]
pub struct AclContext {
    /// `None` for an empty rule set (librte_acl cannot build one).
    ptr: Option<NonNull<ffi::rte_acl_ctx>>,
    rules: usize,
    memory: u64,
}

// SAFETY: the context is built before the value exists and never changed
// afterwards; rte_acl_free may run on any thread.
unsafe impl Send for AclContext {}
// SAFETY: rte_acl_classify on a built context only reads it (librte_acl
// documents classification as safe from many lcores at once).
unsafe impl Sync for AclContext {}

impl AclContext {
    /// Creates a context, adds `rules` and builds it.
    pub fn build(_eal: &Eal, rules: &[AclRule]) -> Result<AclContext, AclError> {
        let mut raw = Vec::with_capacity(rules.len());
        for (index, r) in rules.iter().enumerate() {
            let bad = |why| Err(AclError::BadRule { index, why });
            if !(1..=ACL_MAX_PRIORITY).contains(&r.priority) {
                return bad("priority outside 1..=ACL_MAX_PRIORITY");
            }
            if r.userdata == 0 {
                return bad("userdata 0 is reserved for \"no match\"");
            }
            if r.src.1 > 32 || r.dst.1 > 32 {
                return bad("prefix length above 32");
            }
            if r.sport.0 > r.sport.1 || r.dport.0 > r.dport.1 {
                return bad("port range with its low end above its high end");
            }
            raw.push(ffi::tandem_acl_rule {
                proto: r.proto.unwrap_or(0),
                proto_mask: if r.proto.is_some() { 0xff } else { 0 },
                src_len: r.src.1,
                dst_len: r.dst.1,
                src: u32::from(r.src.0),
                dst: u32::from(r.dst.0),
                sport_lo: r.sport.0,
                sport_hi: r.sport.1,
                dport_lo: r.dport.0,
                dport_hi: r.dport.1,
                in_port: r.in_port.unwrap_or(0),
                in_port_mask: if r.in_port.is_some() { 0xffff } else { 0 },
                out_port: r.out_port.unwrap_or(0),
                out_port_mask: if r.out_port.is_some() { 0xffff } else { 0 },
                priority: r.priority,
                userdata: r.userdata,
            });
        }
        if raw.is_empty() {
            return Ok(AclContext {
                ptr: None,
                rules: 0,
                memory: 0,
            });
        }
        let fail = |op, code: i32| AclError::Dpdk {
            op,
            code,
            msg: strerror(code),
        };
        let serial = ACL_SERIAL.fetch_add(1, Ordering::Relaxed);
        // Names are unique per process (librte_acl refuses duplicates) and
        // shorter than RTE_ACL_NAMESIZE.
        let name = CString::new(format!("tandem_acl_{serial}")).expect("no NUL in the name");
        let max = u32::try_from(raw.len()).map_err(|_| fail("create", -libc::E2BIG))?;
        // SAFETY: reads a counter of DPDK's heaps; the EAL is up (&Eal).
        let before = unsafe { ffi::tandem_heap_allocated() };
        // SAFETY: valid C string; the EAL is initialised (&Eal).
        let ptr = unsafe { ffi::tandem_acl_create(name.as_ptr(), ffi::SOCKET_ID_ANY, max) };
        let ptr = NonNull::new(ptr).ok_or_else(|| fail("create", -last_errno()))?;
        // Owns the context from here on, so every error path frees it.
        let mut ctx = AclContext {
            ptr: Some(ptr),
            rules: raw.len(),
            memory: 0,
        };
        // SAFETY: ptr is a fresh context with room for max rules; raw holds
        // max valid rules.
        let rc = unsafe { ffi::tandem_acl_add_rules(ptr.as_ptr(), raw.as_ptr(), max) };
        if rc != 0 {
            return Err(fail("add rules", rc));
        }
        // SAFETY: a context with its rules, not shared with anyone yet.
        let rc = unsafe { ffi::tandem_acl_build(ptr.as_ptr()) };
        if rc != 0 {
            return Err(fail("build", rc));
        }
        // SAFETY: as above.
        let after = unsafe { ffi::tandem_heap_allocated() };
        ctx.memory = after.saturating_sub(before);
        Ok(ctx)
    }

    /// Classifies `keys`: `results[i]` is the userdata of the
    /// highest-priority rule that matches `keys[i]`, 0 when none does.
    /// Classifies `min(keys.len(), results.len())` keys.
    #[inline]
    pub fn classify(&self, keys: &[AclKey], results: &mut [u32]) {
        let n = keys.len().min(results.len());
        let Some(ptr) = self.ptr else {
            results[..n].fill(0);
            return;
        };
        // SAFETY: a built context is only read; keys and results hold n
        // elements each (AclKey is a transparent tandem_acl_key).
        let rc = unsafe {
            ffi::tandem_acl_classify(
                ptr.as_ptr(),
                keys.as_ptr().cast::<ffi::tandem_acl_key>(),
                results.as_mut_ptr(),
                n as u32,
            )
        };
        // rte_acl_classify fails only on invalid arguments, which the types
        // exclude.
        debug_assert_eq!(rc, 0, "rte_acl_classify rejected its arguments");
    }

    /// Number of rules.
    pub fn rules(&self) -> usize {
        self.rules
    }

    /// DPDK heap memory the context took when built (measured as the
    /// growth of the heaps, so approximate if other threads allocated at
    /// the same time).
    pub fn memory_bytes(&self) -> u64 {
        self.memory
    }
}

impl Drop for AclContext {
    fn drop(&mut self) {
        if let Some(ptr) = self.ptr.take() {
            // SAFETY: we own the context and nothing else refers to it
            // (classify borrows self).
            unsafe { ffi::rte_acl_free(ptr.as_ptr()) }
        }
    }
}

impl Eal {
    /// The EAL of this process if it is initialised: for code that runs
    /// both with DPDK (production) and without (unit tests) and picks an
    /// implementation accordingly.
    pub fn running() -> Option<&'static Eal> {
        static RUNNING: Eal = Eal { _private: () };
        EAL_READY.load(Ordering::SeqCst).then_some(&RUNNING)
    }
}

impl TxQueue {
    /// Calls the driver's transmit function with no packets. Drivers that
    /// send their own control frames from the transmit path need this when
    /// there is nothing else to send: the bonding PMD in 802.3ad mode
    /// transmits its LACPDUs only from inside a transmit call on the bond
    /// (and handles the partner's only inside a receive call), so a worker
    /// that owns a queue of an 802.3ad bond must call this (and `rx_burst`)
    /// at least every 100 ms, or the partner times the members out.
    /// [`TxQueue::tx_burst`] with an empty vector does not reach the driver.
    #[inline]
    pub fn kick(&mut self) {
        let mut none = [std::ptr::null_mut::<ffi::rte_mbuf>(); 1];
        // SAFETY: this handle is the queue's only user; with a count of 0
        // the driver reads no packet pointer from the (valid) array.
        unsafe {
            ffi::tandem_tx_burst(self.port, self.queue, none.as_mut_ptr(), 0);
        }
    }
}

// ---- Link aggregates (the bonding PMD, net_bonding) ----
//
// A bond is created from the EAL's command line, its members first:
//   --vdev=net_af_packet0,iface=eth1 --vdev=net_af_packet1,iface=eth2
//   --vdev=net_bonding0,mode=4,slave=net_af_packet0,slave=net_af_packet1
// (DPDK 22.11 spells the member key `slave`; further keys: primary=<member>,
// xmit_policy=l2|l23|l34, agg_mode=count|stable|bandwidth,
// lsc_poll_period_ms=, up_delay=, down_delay=, mac=). Only the bond is
// opened as a [`Port`]: the PMD configures and starts the members itself.

/// The bonding mode of a net_bonding port (`mode=` of its vdev spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BondMode {
    /// 0: round robin over the members that are up.
    RoundRobin,
    /// 1: one member carries everything; another takes over when it fails.
    ActiveBackup,
    /// 2: transmit balanced by a hash of the headers.
    Balance,
    /// 3: every frame on every member.
    Broadcast,
    /// 4: IEEE 802.3ad / 802.1AX dynamic aggregation with LACP.
    Lacp,
    /// 5: adaptive transmit load balancing.
    Tlb,
    /// 6: adaptive load balancing (transmit and receive).
    Alb,
}

impl BondMode {
    /// The mode of DPDK's number (`BONDING_MODE_*`), if it is one.
    pub fn from_number(n: u8) -> Option<BondMode> {
        Some(match u32::from(n) {
            ffi::BONDING_MODE_ROUND_ROBIN => BondMode::RoundRobin,
            ffi::BONDING_MODE_ACTIVE_BACKUP => BondMode::ActiveBackup,
            ffi::BONDING_MODE_BALANCE => BondMode::Balance,
            ffi::BONDING_MODE_BROADCAST => BondMode::Broadcast,
            ffi::BONDING_MODE_8023AD => BondMode::Lacp,
            ffi::BONDING_MODE_TLB => BondMode::Tlb,
            ffi::BONDING_MODE_ALB => BondMode::Alb,
            _ => return None,
        })
    }

    /// DPDK's number for the mode (what `mode=` takes).
    pub fn number(self) -> u8 {
        (match self {
            BondMode::RoundRobin => ffi::BONDING_MODE_ROUND_ROBIN,
            BondMode::ActiveBackup => ffi::BONDING_MODE_ACTIVE_BACKUP,
            BondMode::Balance => ffi::BONDING_MODE_BALANCE,
            BondMode::Broadcast => ffi::BONDING_MODE_BROADCAST,
            BondMode::Lacp => ffi::BONDING_MODE_8023AD,
            BondMode::Tlb => ffi::BONDING_MODE_TLB,
            BondMode::Alb => ffi::BONDING_MODE_ALB,
        }) as u8
    }
}

/// What the control thread needs to know about an aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BondInfo {
    /// The bonding mode.
    pub mode: BondMode,
    /// Every member port, in the bond's order (the order of `slave=`).
    pub members: Vec<u16>,
    /// The members whose link is up: for members backed by a kernel
    /// interface (af_packet, af_xdp, tap) the kernel's carrier, read at
    /// the call (see [`port_kernel_carrier`]); for the others the link the
    /// bond sees. A subset of `members`, in the same order.
    pub up: Vec<u16>,
    /// The members that carry traffic, a subset of `up`: in 802.3ad mode
    /// those the bond distributes on (LACP negotiated: actor state
    /// DISTRIBUTING); in active-backup mode the current primary; in the
    /// other modes every member that is up. A member whose carrier dropped
    /// leaves this list at once, even while the bond itself still sends on
    /// it (see [`bond_follow_carriers`]).
    pub active: Vec<u16>,
    /// The current primary member (the active one in active-backup mode,
    /// the source of the bond's MAC address in the others), if any.
    pub primary: Option<u16>,
}

/// 802.1AX actor/partner state bits, as [`LacpMember`] reports them.
pub mod lacp_state {
    /// LACP active (sends LACPDUs even to a passive partner).
    pub const ACTIVE: u8 = 0x01;
    /// Short timeout: asks the partner for a LACPDU every second.
    pub const SHORT_TIMEOUT: u8 = 0x02;
    /// The link can be aggregated.
    pub const AGGREGATION: u8 = 0x04;
    /// Attached to the right aggregator.
    pub const SYNCHRONIZATION: u8 = 0x08;
    /// Accepting frames.
    pub const COLLECTING: u8 = 0x10;
    /// Sending frames.
    pub const DISTRIBUTING: u8 = 0x20;
    /// Using default (not received) partner information.
    pub const DEFAULTED: u8 = 0x40;
    /// The partner's information expired.
    pub const EXPIRED: u8 = 0x80;
}

/// One member's LACP state in an 802.3ad bond.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LacpMember {
    /// Selection of the member's aggregator: 0 unselected, 1 standby,
    /// 2 selected.
    pub selected: u8,
    /// Our state on this member ([`lacp_state`] bits).
    pub actor_state: u8,
    /// The partner's state as last received ([`lacp_state`] bits).
    pub partner_state: u8,
    /// The port id of the aggregator the member is attached to.
    pub aggregator: u16,
}

impl LacpMember {
    /// Whether the bond distributes frames on this member.
    pub fn distributing(&self) -> bool {
        self.actor_state & lacp_state::DISTRIBUTING != 0
    }
}

/// The 802.3ad timers of a bond, in milliseconds
/// (`struct rte_eth_bond_8023ad_conf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LacpTimers {
    /// LACPDU period when the partner asked for short timeouts.
    pub fast_periodic_ms: u32,
    /// LACPDU period otherwise. DPDK's members never ask for short
    /// timeouts, so between two DPDK bonds this is the period in use.
    pub slow_periodic_ms: u32,
    /// Expiry of the partner's information once expired (and with short
    /// timeouts).
    pub short_timeout_ms: u32,
    /// Expiry of the partner's information after its last LACPDU: with
    /// DPDK's members (long timeouts) the time a silent partner keeps a
    /// member distributing.
    pub long_timeout_ms: u32,
    /// Wait before attaching a member to an aggregator.
    pub aggregate_wait_timeout_ms: u32,
    /// Minimum time between two LACPDUs on a member.
    pub tx_period_ms: u32,
    /// Marker response period.
    pub rx_marker_period_ms: u32,
    /// Period of the state machines (an EAL alarm).
    pub update_timeout_ms: u32,
}

impl LacpTimers {
    /// DPDK 22.11's defaults: a LACPDU every 29 s between DPDK bonds, a
    /// silent partner noticed after 90 s.
    pub const DPDK_DEFAULT: LacpTimers = LacpTimers {
        fast_periodic_ms: 900,
        slow_periodic_ms: 29_000,
        short_timeout_ms: 3_000,
        long_timeout_ms: 90_000,
        aggregate_wait_timeout_ms: 2_000,
        tx_period_ms: 500,
        rx_marker_period_ms: 2_000,
        update_timeout_ms: 100,
    };

    /// The fast rate of 802.3ad, for two DPDK bonds facing each other: a
    /// LACPDU every second and a silent partner noticed after 3 s. Set it
    /// on BOTH ends: DPDK never asks its partner for short timeouts, so a
    /// partner on slow timers (a switch, a DPDK bond on the defaults) sends
    /// every 30 s and would be timed out between two of its LACPDUs.
    pub const FAST: LacpTimers = LacpTimers {
        fast_periodic_ms: 900,
        slow_periodic_ms: 1_000,
        short_timeout_ms: 2_000,
        long_timeout_ms: 3_000,
        aggregate_wait_timeout_ms: 2_000,
        tx_period_ms: 500,
        rx_marker_period_ms: 2_000,
        update_timeout_ms: 100,
    };

    fn check(&self) -> Result<(), &'static str> {
        if self.fast_periodic_ms == 0 || self.fast_periodic_ms >= self.slow_periodic_ms {
            return Err("fast_periodic_ms must be above 0 and below slow_periodic_ms");
        }
        if self.short_timeout_ms == 0 || self.short_timeout_ms >= self.long_timeout_ms {
            return Err("short_timeout_ms must be above 0 and below long_timeout_ms");
        }
        if self.aggregate_wait_timeout_ms == 0
            || self.tx_period_ms == 0
            || self.rx_marker_period_ms == 0
            || self.update_timeout_ms == 0
        {
            return Err("every timer must be above 0");
        }
        Ok(())
    }
}

fn port_error(port: u16, op: &'static str, code: i32) -> DpdkError {
    let name = port_info(port).map(|i| i.device).unwrap_or_default();
    DpdkError::Port {
        port,
        name,
        op,
        code: -code.abs(),
        msg: strerror(code),
    }
}

/// The device name of a port (a PCI address or the vdev name, e.g.
/// `net_af_packet0`): how members of a bond are named in its vdev spec.
pub fn port_name(port_id: u16) -> Result<String, DpdkError> {
    port_info(port_id).map(|i| i.device)
}

/// The driver's counters of any port by id, e.g. a bond's member, which is
/// not opened as a [`Port`] (the bond drives it).
pub fn port_counters(port_id: u16) -> Result<PortCounters, DpdkError> {
    let mut s = ffi::rte_eth_stats::default();
    // SAFETY: valid out pointer; DPDK checks the port id.
    let rc = unsafe { ffi::rte_eth_stats_get(port_id, &mut s) };
    if rc != 0 {
        return Err(port_error(port_id, "read statistics", rc));
    }
    Ok(PortCounters {
        rx_packets: s.ipackets,
        rx_bytes: s.ibytes,
        tx_packets: s.opackets,
        tx_bytes: s.obytes,
        rx_missed: s.imissed,
        rx_errors: s.ierrors,
        tx_errors: s.oerrors,
        rx_nombuf: s.rx_nombuf,
    })
}

/// Turns promiscuous reception of a port on or off (for a bond: on every
/// member, and the bond accepts frames for any destination).
///
/// An 802.3ad bond needs it over members that cannot filter multicast
/// (af_packet: "Failed to enable allmulti mode" in the log at start):
/// its receive path then drops every broadcast and multicast frame, ARP
/// requests included, unless the bond is promiscuous (check with
/// [`port_allmulticast`]). Frames for other unicast addresses then reach
/// the application too, which must check the destination itself.
pub fn set_promiscuous(port_id: u16, on: bool) -> Result<(), DpdkError> {
    // SAFETY: plain calls; DPDK checks the port id.
    let rc = unsafe {
        if on {
            ffi::rte_eth_promiscuous_enable(port_id)
        } else {
            ffi::rte_eth_promiscuous_disable(port_id)
        }
    };
    if rc != 0 {
        return Err(port_error(port_id, "set promiscuous mode", rc));
    }
    Ok(())
}

/// Whether a port receives every multicast and broadcast frame (promiscuous
/// or all-multicast mode on). `false` for unknown ports.
pub fn port_allmulticast(port_id: u16) -> bool {
    // SAFETY: plain queries; DPDK checks the port id (-1 when unknown).
    unsafe {
        ffi::rte_eth_promiscuous_get(port_id) == 1 || ffi::rte_eth_allmulticast_get(port_id) == 1
    }
}

/// The kernel interface behind a port (the `iface=` of an af_packet or
/// af_xdp port, the interface of a tap port), looked up in the calling
/// thread's network namespace. `None` for ports without one (PCI, ring,
/// null, bonding) and for unknown ports.
pub fn port_kernel_interface(port_id: u16) -> Option<String> {
    // SAFETY: a plain query; an unknown port gives 0.
    let ifindex = unsafe { ffi::tandem_port_ifindex(port_id) };
    if ifindex == 0 {
        return None;
    }
    let mut buf = [0 as std::os::raw::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has the IF_NAMESIZE bytes if_indextoname writes at most.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success if_indextoname wrote a NUL-terminated name into
    // buf (p points at buf).
    let name = unsafe { CStr::from_ptr(p) };
    Some(name.to_string_lossy().into_owned())
}

/// Whether the kernel interface behind a port is up with carrier (flags
/// IFF_UP and IFF_RUNNING, read with SIOCGIFFLAGS in the calling thread's
/// network namespace, so it works where sysfs shows another namespace).
/// `None` for ports without a kernel interface. DPDK 22.11's af_packet and
/// af_xdp drivers never report a carrier change themselves: this is the
/// only way to see a cut link behind them.
pub fn port_kernel_carrier(port_id: u16) -> Option<bool> {
    let name = port_kernel_interface(port_id)?;
    kernel_interface_running(&name)
}

fn kernel_interface_running(name: &str) -> Option<bool> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let bytes = name.as_bytes();
    if bytes.len() >= libc::IF_NAMESIZE {
        return None;
    }
    // SAFETY: plain socket creation; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data for which all zeroes is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, &s) in ifr.ifr_name.iter_mut().zip(bytes) {
        *d = s as std::os::raw::c_char;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: a valid socket and a valid ifreq holding a NUL-terminated
    // name (bytes.len() < IF_NAMESIZE, rest zeroed); SIOCGIFFLAGS writes
    // the flags into it.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) };
    if rc < 0 {
        return None;
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = i32::from(unsafe { ifr.ifr_ifru.ifru_flags });
    Some(flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0)
}

fn member_link_up(port: u16) -> bool {
    if let Some(carrier) = port_kernel_carrier(port) {
        return carrier;
    }
    let mut l = ffi::tandem_link::default();
    // SAFETY: valid out pointer; an unknown port returns an error.
    let rc = unsafe { ffi::tandem_port_link(port, &mut l) };
    rc == 0 && l.up != 0
}

fn bond_ports(
    bond: u16,
    op: &'static str,
    get: unsafe extern "C" fn(u16, *mut u16, u16) -> std::os::raw::c_int,
) -> Result<Vec<u16>, DpdkError> {
    let mut ids = [0u16; ffi::RTE_MAX_ETHPORTS as usize];
    // SAFETY: ids holds RTE_MAX_ETHPORTS entries, the length given; the
    // call writes at most that many port ids.
    let n = unsafe { get(bond, ids.as_mut_ptr(), ids.len() as u16) };
    if n < 0 {
        return Err(port_error(bond, op, n));
    }
    Ok(ids[..(n as usize).min(ids.len())].to_vec())
}

/// The state of an aggregate: `None` when the port is not a net_bonding
/// port. Safe to call from the control thread while workers poll the
/// bond's queues (the bonding PMD's getters only read).
pub fn bond_info(port_id: u16) -> Result<Option<BondInfo>, DpdkError> {
    let info = port_info(port_id)?;
    if info.driver != "net_bonding" {
        return Ok(None);
    }
    // SAFETY: a plain query on an existing port.
    let mode = unsafe { ffi::rte_eth_bond_mode_get(port_id) };
    if mode < 0 {
        return Err(port_error(port_id, "read bonding mode", -libc::EINVAL));
    }
    let mode = BondMode::from_number(mode as u8).ok_or_else(|| DpdkError::Port {
        port: port_id,
        name: info.device.clone(),
        op: "read bonding mode",
        code: -libc::EINVAL,
        msg: format!("unknown bonding mode {mode}"),
    })?;
    let members = bond_ports(port_id, "list members", ffi::rte_eth_bond_slaves_get)?;
    let link_up = bond_ports(
        port_id,
        "list active members",
        ffi::rte_eth_bond_active_slaves_get,
    )?;
    // SAFETY: a plain query; -1 when the bond has no member.
    let primary = unsafe { ffi::rte_eth_bond_primary_get(port_id) };
    let primary = u16::try_from(primary).ok().filter(|p| members.contains(p));
    let up: Vec<u16> = members
        .iter()
        .copied()
        .filter(|m| link_up.contains(m) && member_link_up(*m))
        .collect();
    let active = match mode {
        BondMode::Lacp => {
            let mut active = Vec::with_capacity(up.len());
            for &m in &up {
                if lacp_member(port_id, m)?.is_some_and(|l| l.distributing()) {
                    active.push(m);
                }
            }
            active
        }
        BondMode::ActiveBackup => primary.filter(|p| up.contains(p)).into_iter().collect(),
        _ => up.clone(),
    };
    Ok(Some(BondInfo {
        mode,
        members,
        up,
        active,
        primary,
    }))
}

/// The LACP state of one member of an 802.3ad bond; `None` while the bond
/// has the member out of use (its link down as the bond sees it).
pub fn lacp_member(bond: u16, member: u16) -> Result<Option<LacpMember>, DpdkError> {
    let mut raw = ffi::tandem_lacp_member::default();
    // SAFETY: valid out pointer; DPDK checks both port ids.
    let rc = unsafe { ffi::tandem_bond_lacp_member(bond, member, &mut raw) };
    if rc == -libc::EINVAL {
        // Not an 802.3ad bond, or not one of its members in use: tell the
        // two apart for the caller.
        // SAFETY: a plain query.
        let mode = unsafe { ffi::rte_eth_bond_mode_get(bond) };
        if mode != ffi::BONDING_MODE_8023AD as i32 {
            return Err(DpdkError::Port {
                port: bond,
                name: port_name(bond).unwrap_or_default(),
                op: "read LACP state",
                code: -libc::EINVAL,
                msg: "not an 802.3ad (mode=4) bond".into(),
            });
        }
        return Ok(None);
    }
    if rc != 0 {
        return Err(port_error(bond, "read LACP state", rc));
    }
    Ok(Some(LacpMember {
        selected: raw.selected,
        actor_state: raw.actor_state,
        partner_state: raw.partner_state,
        aggregator: raw.agg_port_id,
    }))
}

/// The 802.3ad timers of a bond.
pub fn bond_lacp_timers(bond: u16) -> Result<LacpTimers, DpdkError> {
    let mut t = ffi::tandem_lacp_timers::default();
    // SAFETY: valid out pointer; DPDK checks the port.
    let rc = unsafe { ffi::tandem_bond_lacp_timers_get(bond, &mut t) };
    if rc != 0 {
        return Err(port_error(bond, "read LACP timers", rc));
    }
    Ok(LacpTimers {
        fast_periodic_ms: t.fast_periodic_ms,
        slow_periodic_ms: t.slow_periodic_ms,
        short_timeout_ms: t.short_timeout_ms,
        long_timeout_ms: t.long_timeout_ms,
        aggregate_wait_timeout_ms: t.aggregate_wait_timeout_ms,
        tx_period_ms: t.tx_period_ms,
        rx_marker_period_ms: t.rx_marker_period_ms,
        update_timeout_ms: t.update_timeout_ms,
    })
}

/// Replaces the 802.3ad timers of a bond (e.g. [`LacpTimers::FAST`]).
/// Works on a started bond: the PMD restarts its state-machine timer and
/// the members keep their negotiated state. Call it after [`Port::open`]
/// (configuring the bond resets the timers to DPDK's defaults).
pub fn set_bond_lacp_timers(bond: u16, timers: &LacpTimers) -> Result<(), DpdkError> {
    if let Err(why) = timers.check() {
        return Err(DpdkError::Port {
            port: bond,
            name: port_name(bond).unwrap_or_default(),
            op: "set LACP timers",
            code: -libc::EINVAL,
            msg: why.into(),
        });
    }
    let t = ffi::tandem_lacp_timers {
        fast_periodic_ms: timers.fast_periodic_ms,
        slow_periodic_ms: timers.slow_periodic_ms,
        short_timeout_ms: timers.short_timeout_ms,
        long_timeout_ms: timers.long_timeout_ms,
        aggregate_wait_timeout_ms: timers.aggregate_wait_timeout_ms,
        tx_period_ms: timers.tx_period_ms,
        rx_marker_period_ms: timers.rx_marker_period_ms,
        update_timeout_ms: timers.update_timeout_ms,
    };
    // SAFETY: a valid struct; DPDK checks the port and the mode.
    let rc = unsafe { ffi::tandem_bond_lacp_timers_set(bond, &t) };
    if rc != 0 {
        return Err(port_error(
            bond,
            "set LACP timers (is it a mode=4 bond?)",
            rc,
        ));
    }
    Ok(())
}

/// Makes `member` the bond's primary: in active-backup mode the member
/// that carries the traffic from now on (in the others the source of the
/// bond's MAC address). The member must be one of the bond's.
pub fn set_bond_primary(bond: u16, member: u16) -> Result<(), DpdkError> {
    // SAFETY: plain call; DPDK checks both port ids.
    let rc = unsafe { ffi::rte_eth_bond_primary_set(bond, member) };
    if rc != 0 {
        return Err(port_error(bond, "set primary member", rc));
    }
    Ok(())
}

/// Feeds the kernel carrier of a bond's members into the bond, for
/// members whose driver cannot see it (af_packet, af_xdp: DPDK 22.11's
/// drivers report their link up from start to stop, so the bond's own
/// link monitoring, `lsc_poll_period_ms`, never sees them fail).
///
/// What it does, by mode:
/// - active-backup: when the current primary's kernel interface has lost
///   its carrier (see [`port_kernel_carrier`]) and another member has one,
///   makes the first such member (in the bond's order) the primary and
///   returns it. The bond then sends and receives on it from its next
///   burst. There is no automatic return: the new primary stays until it
///   fails in turn (Linux's `primary_reselect=failure`).
/// - 802.3ad: nothing to do and `None`: the bond stops distributing on a
///   member when the partner's LACPDUs stop arriving on it, after the
///   long timeout (90 s with DPDK's defaults, 3 s with
///   [`LacpTimers::FAST`] on both ends). Until then the frames the bond
///   hashes onto the cut member are lost. [`bond_info`] already leaves
///   the member out of `up` and `active` from the carrier drop on.
/// - the other modes: `None` (not handled).
///
/// Call it from the control thread every 100 ms or so; the failover time
/// of active-backup over af_packet is that period plus the call.
pub fn bond_follow_carriers(bond: u16) -> Result<Option<u16>, DpdkError> {
    let Some(info) = bond_info(bond)? else {
        return Err(DpdkError::Port {
            port: bond,
            name: port_name(bond).unwrap_or_default(),
            op: "follow member carriers",
            code: -libc::EINVAL,
            msg: "not a net_bonding port".into(),
        });
    };
    if info.mode != BondMode::ActiveBackup {
        return Ok(None);
    }
    let current_up = info.primary.is_some_and(|p| info.up.contains(&p));
    if current_up {
        return Ok(None);
    }
    let Some(&next) = info.up.first() else {
        return Ok(None);
    };
    set_bond_primary(bond, next)?;
    Ok(Some(next))
}
