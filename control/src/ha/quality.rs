//! The quality factor (HA-REFERENCE F12, F19): how much of this member's
//! data network works, as an integer percentage 0-100.
//!
//! Rounding: the weighted share is rounded **down** (`100 * up / total`
//! in integer arithmetic), so a member is never reported better than it is.

/// Identifies a link aggregate (a DPDK bonding device).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AggregateId(pub u16);

/// The bonding mode of an aggregate, which selects the member-weight option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AggregateKind {
    /// 802.3ad (bonding mode 4); `lacp_members_have_weight` applies.
    Lacp,
    /// Active-backup redundancy; `failover_members_have_weight` applies.
    Redundancy,
}

/// A link aggregate: counts as one interface while its members carry no weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Aggregate {
    /// The aggregate's id, referenced by its members.
    pub id: AggregateId,
    /// LACP or redundancy.
    pub kind: AggregateKind,
    /// Weight of the aggregate as one interface (0..=9999, default 100).
    pub weight: u16,
}

/// A data interface as the quality factor sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Operator-visible name (for logs).
    pub name: String,
    /// Weight 0..=9999 (default 100); 0 leaves the interface out; larger values are clamped.
    pub weight: u16,
    /// Link state.
    pub up: bool,
    /// The aggregate this interface is a member of, if any.
    pub aggregate: Option<AggregateId>,
    /// An HA link: never part of the quality factor.
    pub ha: bool,
}

impl Interface {
    /// A stand-alone data interface with the default weight 100.
    pub fn new(name: &str, up: bool) -> Self {
        Interface {
            name: name.to_string(),
            weight: DEFAULT_WEIGHT,
            up,
            aggregate: None,
            ha: false,
        }
    }
}

/// Something other than an interface that pulls the quality down when it fails
/// (a disk, the TPM, a hardware module).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Penalty {
    /// Operator-visible name.
    pub name: String,
    /// Healthy.
    pub ok: bool,
    /// Weight 0..=9999; 0 leaves it out.
    pub weight: u16,
}

/// Options of the quality factor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QualityConfig {
    /// `LACPMembersHaveWeight`: each LACP member counts with its own weight.
    pub lacp_members_have_weight: bool,
    /// `FailoverMembersHaveWeight`: each redundancy member counts with its own weight.
    pub failover_members_have_weight: bool,
}

/// The default interface weight (F12).
pub const DEFAULT_WEIGHT: u16 = 100;
/// The largest weight (F12).
pub const MAX_WEIGHT: u16 = 9999;

/// The quality factor 0..=100, rounded down; 100 when nothing carries weight.
pub fn quality(
    interfaces: &[Interface],
    aggregates: &[Aggregate],
    penalties: &[Penalty],
    cfg: &QualityConfig,
) -> u8 {
    let mut total: u64 = 0;
    let mut good: u64 = 0;
    let mut add = |weight: u16, ok: bool| {
        let w = u64::from(weight.min(MAX_WEIGHT));
        total += w;
        if ok {
            good += w;
        }
    };
    for agg in aggregates {
        let members_weigh = match agg.kind {
            AggregateKind::Lacp => cfg.lacp_members_have_weight,
            AggregateKind::Redundancy => cfg.failover_members_have_weight,
        };
        let mut members = interfaces
            .iter()
            .filter(|i| !i.ha && i.aggregate == Some(agg.id));
        if members_weigh {
            for m in members {
                add(m.weight, m.up);
            }
        } else {
            // Empty aggregates count as down: they carry no traffic.
            add(agg.weight, members.any(|m| m.up));
        }
    }
    for i in interfaces.iter().filter(|i| !i.ha) {
        let in_known_aggregate = i
            .aggregate
            .is_some_and(|a| aggregates.iter().any(|g| g.id == a));
        if !in_known_aggregate {
            add(i.weight, i.up);
        }
    }
    for p in penalties {
        add(p.weight, p.ok);
    }
    if total == 0 {
        return 100;
    }
    // good <= total, so the result is at most 100.
    u8::try_from(good * 100 / total).unwrap_or(100)
}
