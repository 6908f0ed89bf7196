//! The host table: per initiating host address, how many connections it
//! has open and has created, in a bounded open-addressing table. A host's
//! row lives while it has open connections; when the table is full, new
//! hosts are not tracked (counted), never an existing row evicted.

use std::net::Ipv4Addr;

/// One host's counts, as shown by `tandemctl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostView {
    /// The host (the initiator of its connections).
    pub addr: Ipv4Addr,
    /// Connections open now.
    pub open: u32,
    /// Connections created since the row appeared.
    pub created: u32,
}

#[derive(Clone, Copy, Debug)]
struct Row {
    addr: u32,
    open: u32,
    created: u32,
}

const EMPTY: u32 = 0;

/// The table.
#[derive(Debug)]
pub(crate) struct HostTable {
    rows: Vec<Row>,
    mask: usize,
    len: usize,
    limit: usize,
    /// Creations of hosts that found the table full.
    pub full: u64,
}

#[inline]
fn home(addr: u32, mask: usize) -> usize {
    (u64::from(addr).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize & mask
}

impl HostTable {
    pub fn new(limit: usize) -> HostTable {
        let n = (limit.max(1) * 2).next_power_of_two();
        HostTable {
            rows: vec![
                Row {
                    addr: 0,
                    open: EMPTY,
                    created: 0
                };
                n
            ],
            mask: n - 1,
            len: 0,
            limit: limit.max(1),
            full: 0,
        }
    }

    fn find(&self, addr: u32) -> Result<usize, usize> {
        let mut i = home(addr, self.mask);
        loop {
            let r = &self.rows[i];
            if r.open == EMPTY {
                return Err(i);
            }
            if r.addr == addr {
                return Ok(i);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// A connection from `addr` opened. Returns whether it is tracked.
    pub fn open(&mut self, addr: Ipv4Addr) -> bool {
        match self.find(addr.into()) {
            Ok(i) => {
                self.rows[i].open += 1;
                self.rows[i].created = self.rows[i].created.wrapping_add(1);
                true
            }
            Err(i) => {
                if self.len >= self.limit {
                    self.full += 1;
                    return false;
                }
                self.len += 1;
                self.rows[i] = Row {
                    addr: addr.into(),
                    open: 1,
                    created: 1,
                };
                true
            }
        }
    }

    /// A connection from `addr` closed (no-op for an untracked host).
    pub fn close(&mut self, addr: Ipv4Addr) {
        let Ok(i) = self.find(addr.into()) else {
            return;
        };
        self.rows[i].open -= 1;
        if self.rows[i].open > 0 {
            return;
        }
        // Backward-shift deletion.
        self.len -= 1;
        let mut hole = i;
        let mut k = (hole + 1) & self.mask;
        while self.rows[k].open != EMPTY {
            let h = home(self.rows[k].addr, self.mask);
            if (k.wrapping_sub(h) & self.mask) >= (k.wrapping_sub(hole) & self.mask) {
                self.rows[hole] = self.rows[k];
                hole = k;
            }
            k = (k + 1) & self.mask;
        }
        self.rows[hole].open = EMPTY;
    }

    /// The row of `addr`.
    pub fn get(&self, addr: Ipv4Addr) -> Option<HostView> {
        self.find(addr.into()).ok().map(|i| self.view(i))
    }

    fn view(&self, i: usize) -> HostView {
        let r = self.rows[i];
        HostView {
            addr: r.addr.into(),
            open: r.open,
            created: r.created,
        }
    }

    /// Every row.
    pub fn iter(&self) -> impl Iterator<Item = HostView> + '_ {
        (0..self.rows.len())
            .filter(|&i| self.rows[i].open != EMPTY)
            .map(|i| self.view(i))
    }

    /// Number of hosts tracked.
    pub fn len(&self) -> usize {
        self.len
    }
}
