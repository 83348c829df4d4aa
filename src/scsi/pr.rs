//! Persistent reservations (SPC-4 §5.13, PERSISTENT RESERVE IN/OUT §6.13-6.14), keyed by
//! iSCSI initiator port name. Registrations survive nexus loss and resets (not power loss:
//! APTPL is not supported).
//!
//! Operations return the unit attentions they establish as `(initiator port, code)` pairs;
//! the caller queues them on every live nexus of that port.

use super::sense::{Sense, asc};

/// Reservation types (SPC-4 table 170).
pub mod kind {
    pub const WRITE_EXCLUSIVE: u8 = 1;
    pub const EXCLUSIVE_ACCESS: u8 = 3;
    pub const WRITE_EXCLUSIVE_RO: u8 = 5;
    pub const EXCLUSIVE_ACCESS_RO: u8 = 6;
    pub const WRITE_EXCLUSIVE_AR: u8 = 7;
    pub const EXCLUSIVE_ACCESS_AR: u8 = 8;
}

/// PERSISTENT RESERVE OUT service actions.
pub mod sa {
    pub const REGISTER: u8 = 0;
    pub const RESERVE: u8 = 1;
    pub const RELEASE: u8 = 2;
    pub const CLEAR: u8 = 3;
    pub const PREEMPT: u8 = 4;
    pub const PREEMPT_AND_ABORT: u8 = 5;
    pub const REGISTER_AND_IGNORE: u8 = 6;
}

/// Length of the basic PERSISTENT RESERVE OUT parameter list.
pub const PROUT_PARAM_LEN: usize = 24;

fn valid_kind(k: u8) -> bool {
    matches!(k, 1 | 3 | 5 | 6 | 7 | 8)
}
fn all_registrants(k: u8) -> bool {
    matches!(k, kind::WRITE_EXCLUSIVE_AR | kind::EXCLUSIVE_ACCESS_AR)
}
/// Registrants (not only the holder) may access the medium.
fn registrants_share(k: u8) -> bool {
    matches!(k, 5..=8)
}
fn exclusive_access(k: u8) -> bool {
    matches!(
        k,
        kind::EXCLUSIVE_ACCESS | kind::EXCLUSIVE_ACCESS_RO | kind::EXCLUSIVE_ACCESS_AR
    )
}

/// How a command touches the medium, for reservation conflict checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Never in conflict with a persistent reservation (INQUIRY, TEST UNIT READY, PR IN/OUT, ...).
    Allowed,
    /// Conflicts with Exclusive Access reservations held by others.
    Read,
    /// Conflicts with any reservation held by others.
    Write,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Reservation {
    holder: String,
    kind: u8,
}

/// Why a PERSISTENT RESERVE OUT failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrError {
    Conflict,
    Check(Sense),
}

impl From<Sense> for PrError {
    fn from(s: Sense) -> PrError {
        PrError::Check(s)
    }
}

pub type UnitAttentions = Vec<(String, asc::Code)>;

#[derive(Clone, Debug, Default)]
pub struct PrState {
    generation: u32,
    regs: Vec<(String, u64)>,
    res: Option<Reservation>,
}

/// The basic PERSISTENT RESERVE OUT parameter list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProutParams {
    pub key: u64,
    pub sark: u64,
    pub spec_i_pt: bool,
    pub all_tg_pt: bool,
    pub aptpl: bool,
}

impl ProutParams {
    /// Parse the parameter list; `param_len` is the CDB's PARAMETER LIST LENGTH.
    pub fn parse(param_len: u32, data: &[u8]) -> Result<ProutParams, Sense> {
        if param_len as usize != PROUT_PARAM_LEN || data.len() < PROUT_PARAM_LEN {
            return Err(Sense::param_list_length());
        }
        let mut k = [0u8; 8];
        k.copy_from_slice(&data[0..8]);
        let key = u64::from_be_bytes(k);
        k.copy_from_slice(&data[8..16]);
        let sark = u64::from_be_bytes(k);
        Ok(ProutParams {
            key,
            sark,
            spec_i_pt: data[20] & 0x08 != 0,
            all_tg_pt: data[20] & 0x04 != 0,
            aptpl: data[20] & 0x01 != 0,
        })
    }
}

impl PrState {
    pub fn key_of(&self, port: &str) -> Option<u64> {
        self.regs.iter().find(|(p, _)| p == port).map(|(_, k)| *k)
    }

    pub fn reserved(&self) -> bool {
        self.res.is_some()
    }

    pub fn has_registrations(&self) -> bool {
        !self.regs.is_empty()
    }

    /// The port may access the medium as if it held the reservation.
    pub fn is_holder(&self, port: &str) -> bool {
        match &self.res {
            None => false,
            Some(r) => {
                r.holder == port || (registrants_share(r.kind) && self.key_of(port).is_some())
            }
        }
    }

    /// A command of class `access` from `port` is in conflict with the reservation.
    pub fn conflicts(&self, port: &str, access: Access) -> bool {
        let Some(r) = &self.res else { return false };
        if self.is_holder(port) {
            return false;
        }
        match access {
            Access::Allowed => false,
            Access::Read => exclusive_access(r.kind),
            Access::Write => true,
        }
    }

    /// Unit attention `code` for every registered port other than `port`.
    fn others(&self, port: &str, code: asc::Code) -> UnitAttentions {
        self.regs
            .iter()
            .filter(|(p, _)| p != port)
            .map(|(p, _)| (p.clone(), code))
            .collect()
    }

    /// Remove `port`'s registration; releases the reservation when its holder leaves.
    fn unregister(&mut self, port: &str) -> UnitAttentions {
        self.regs.retain(|(p, _)| p != port);
        let mut uas = Vec::new();
        if let Some(r) = self.res.clone() {
            let release = if all_registrants(r.kind) {
                self.regs.is_empty()
            } else {
                r.holder == port
            };
            if release {
                self.res = None;
                if matches!(r.kind, kind::WRITE_EXCLUSIVE_RO | kind::EXCLUSIVE_ACCESS_RO) {
                    uas = self.others(port, asc::RESERVATIONS_RELEASED);
                }
            }
        }
        uas
    }

    /// Run a PERSISTENT RESERVE OUT service action for `port`.
    pub fn out(
        &mut self,
        port: &str,
        action: u8,
        scope: u8,
        rtype: u8,
        p: &ProutParams,
    ) -> Result<UnitAttentions, PrError> {
        let registered = self.key_of(port);
        match action {
            sa::REGISTER | sa::REGISTER_AND_IGNORE => {
                if p.spec_i_pt {
                    return Err(Sense::invalid_param(20, Some(3)).into());
                }
                if p.all_tg_pt {
                    return Err(Sense::invalid_param(20, Some(2)).into());
                }
                if p.aptpl {
                    return Err(Sense::invalid_param(20, Some(0)).into());
                }
                if action == sa::REGISTER {
                    match registered {
                        None if p.key != 0 => return Err(PrError::Conflict),
                        Some(k) if k != p.key => return Err(PrError::Conflict),
                        _ => {}
                    }
                }
                let mut uas = Vec::new();
                match (registered, p.sark) {
                    (None, 0) => return Ok(uas),
                    (None, k) => self.regs.push((port.to_string(), k)),
                    (Some(_), 0) => uas = self.unregister(port),
                    (Some(_), k) => {
                        if let Some(r) = self.regs.iter_mut().find(|(q, _)| q == port) {
                            r.1 = k;
                        }
                    }
                }
                self.generation = self.generation.wrapping_add(1);
                Ok(uas)
            }
            sa::RESERVE => {
                if registered != Some(p.key) {
                    return Err(PrError::Conflict);
                }
                if scope != 0 {
                    return Err(Sense::invalid_cdb(2, Some(4)).into());
                }
                if !valid_kind(rtype) {
                    return Err(Sense::invalid_cdb(2, Some(0)).into());
                }
                match &self.res {
                    Some(r) if self.is_holder(port) && r.kind == rtype => Ok(Vec::new()),
                    Some(_) => Err(PrError::Conflict),
                    None => {
                        self.res = Some(Reservation {
                            holder: port.to_string(),
                            kind: rtype,
                        });
                        Ok(Vec::new())
                    }
                }
            }
            sa::RELEASE => {
                if registered != Some(p.key) {
                    return Err(PrError::Conflict);
                }
                let Some(r) = self.res.clone() else {
                    return Ok(Vec::new());
                };
                if !self.is_holder(port) {
                    return Ok(Vec::new());
                }
                if scope != 0 || r.kind != rtype {
                    return Err(PrError::Check(Sense::new(
                        super::sense::key::ILLEGAL_REQUEST,
                        asc::INVALID_RELEASE_OF_PR,
                    )));
                }
                self.res = None;
                if registrants_share(r.kind) {
                    return Ok(self.others(port, asc::RESERVATIONS_RELEASED));
                }
                Ok(Vec::new())
            }
            sa::CLEAR => {
                if registered != Some(p.key) {
                    return Err(PrError::Conflict);
                }
                let uas = self.others(port, asc::RESERVATIONS_PREEMPTED);
                self.regs.clear();
                self.res = None;
                self.generation = self.generation.wrapping_add(1);
                Ok(uas)
            }
            sa::PREEMPT | sa::PREEMPT_AND_ABORT => {
                if registered != Some(p.key) {
                    return Err(PrError::Conflict);
                }
                let res = self.res.clone();
                let new_res = || -> Result<(), PrError> {
                    if scope != 0 {
                        return Err(Sense::invalid_cdb(2, Some(4)).into());
                    }
                    if !valid_kind(rtype) {
                        return Err(Sense::invalid_cdb(2, Some(0)).into());
                    }
                    Ok(())
                };
                let removed: Vec<String> = match res.clone() {
                    None => {
                        if p.sark == 0 {
                            return Err(Sense::invalid_param(8, None).into());
                        }
                        self.remove_key(port, p.sark)
                    }
                    Some(r) if all_registrants(r.kind) => {
                        if p.sark == 0 {
                            new_res()?;
                            let removed: Vec<String> = self
                                .regs
                                .iter()
                                .filter(|(q, _)| q != port)
                                .map(|(q, _)| q.clone())
                                .collect();
                            self.regs.retain(|(q, _)| q == port);
                            self.res = Some(Reservation {
                                holder: port.to_string(),
                                kind: rtype,
                            });
                            removed
                        } else {
                            self.remove_key(port, p.sark)
                        }
                    }
                    Some(r) if self.key_of(&r.holder) == Some(p.sark) => {
                        new_res()?;
                        let removed = self.remove_key(port, p.sark);
                        self.res = Some(Reservation {
                            holder: port.to_string(),
                            kind: rtype,
                        });
                        removed
                    }
                    Some(_) => {
                        if p.sark == 0 {
                            return Err(Sense::invalid_param(8, None).into());
                        }
                        self.remove_key(port, p.sark)
                    }
                };
                let preempted_self = self.res.as_ref().is_some_and(|r| r.holder == port)
                    && res.as_ref().is_some_and(|r| r.holder == port);
                if removed.is_empty() && !preempted_self {
                    return Err(PrError::Conflict);
                }
                self.generation = self.generation.wrapping_add(1);
                Ok(removed
                    .into_iter()
                    .map(|q| (q, asc::REGISTRATIONS_PREEMPTED))
                    .collect())
            }
            _ => Err(Sense::invalid_cdb(1, Some(4)).into()),
        }
    }

    /// Remove every registration (other than `port`'s) holding `key`; returns their ports.
    fn remove_key(&mut self, port: &str, key: u64) -> Vec<String> {
        let removed: Vec<String> = self
            .regs
            .iter()
            .filter(|(q, k)| *k == key && q != port)
            .map(|(q, _)| q.clone())
            .collect();
        self.regs.retain(|(q, k)| !(*k == key && q != port));
        removed
    }

    /// PERSISTENT RESERVE IN data for service action `action` (0..=3).
    pub fn read(&self, action: u8) -> Vec<u8> {
        let mut d = Vec::new();
        match action {
            0 => {
                d.extend_from_slice(&self.generation.to_be_bytes());
                d.extend_from_slice(&((self.regs.len() * 8) as u32).to_be_bytes());
                for (_, k) in &self.regs {
                    d.extend_from_slice(&k.to_be_bytes());
                }
            }
            1 => {
                d.extend_from_slice(&self.generation.to_be_bytes());
                match &self.res {
                    None => d.extend_from_slice(&0u32.to_be_bytes()),
                    Some(r) => {
                        d.extend_from_slice(&16u32.to_be_bytes());
                        let key = if all_registrants(r.kind) {
                            0
                        } else {
                            self.key_of(&r.holder).unwrap_or(0)
                        };
                        d.extend_from_slice(&key.to_be_bytes());
                        d.extend_from_slice(&[0, 0, 0, 0, 0, r.kind & 0x0F, 0, 0]);
                    }
                }
            }
            2 => {
                // REPORT CAPABILITIES: CRH; TMV; all six types.
                d.extend_from_slice(&8u16.to_be_bytes());
                d.push(0x10); // CRH
                d.push(0x80); // TMV, ALLOW COMMANDS 000b, PTPL_A 0
                d.push(0x80 | 0x40 | 0x20 | 0x08 | 0x02); // WR_EX_AR EX_AC_RO WR_EX_RO EX_AC WR_EX
                d.push(0x01); // EX_AC_AR
                d.extend_from_slice(&[0, 0]);
            }
            _ => {
                // READ FULL STATUS.
                d.extend_from_slice(&self.generation.to_be_bytes());
                d.extend_from_slice(&0u32.to_be_bytes());
                for (port, key) in &self.regs {
                    let tid = transport_id(port);
                    d.extend_from_slice(&key.to_be_bytes());
                    d.extend_from_slice(&[0; 4]);
                    let (holder, scope_type) = match &self.res {
                        Some(r) if self.is_holder(port) => (0x01, r.kind & 0x0F),
                        _ => (0, 0),
                    };
                    d.push(holder); // ALL_TG_PT 0, R_HOLDER
                    d.push(scope_type);
                    d.extend_from_slice(&[0; 4]);
                    d.extend_from_slice(&1u16.to_be_bytes()); // relative target port 1
                    d.extend_from_slice(&(tid.len() as u32).to_be_bytes());
                    d.extend_from_slice(&tid);
                }
                let len = (d.len() - 8) as u32;
                d[4..8].copy_from_slice(&len.to_be_bytes());
            }
        }
        d
    }
}

/// iSCSI TransportID, format 01b (initiator port name with ISID), SPC-4 §7.6.4.6.
pub fn transport_id(port: &str) -> Vec<u8> {
    let mut name: Vec<u8> = port.bytes().filter(|&c| c != 0).take(1000).collect();
    name.push(0);
    while name.len() % 4 != 0 || name.len() < 16 {
        name.push(0);
    }
    let mut t = vec![0x40 | 0x05, 0];
    t.extend_from_slice(&(name.len() as u16).to_be_bytes());
    t.extend_from_slice(&name);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "iqn.a,i,0x000000000001";
    const B: &str = "iqn.b,i,0x000000000002";
    const C: &str = "iqn.c,i,0x000000000003";

    fn params(key: u64, sark: u64) -> ProutParams {
        ProutParams {
            key,
            sark,
            spec_i_pt: false,
            all_tg_pt: false,
            aptpl: false,
        }
    }

    fn reg(s: &mut PrState, port: &str, key: u64) {
        s.out(port, sa::REGISTER_AND_IGNORE, 0, 0, &params(0, key))
            .unwrap();
    }

    #[test]
    fn parse_param_list() {
        let mut d = [0u8; 24];
        d[7] = 1;
        d[15] = 2;
        d[20] = 0x01;
        let p = ProutParams::parse(24, &d).unwrap();
        assert_eq!((p.key, p.sark, p.aptpl), (1, 2, true));
        assert_eq!(
            ProutParams::parse(23, &d[..23]),
            Err(Sense::param_list_length())
        );
        assert_eq!(ProutParams::parse(32, &d), Err(Sense::param_list_length()));
        assert_eq!(
            ProutParams::parse(24, &d[..10]),
            Err(Sense::param_list_length())
        );
    }

    #[test]
    fn register_rules_and_generation() {
        let mut s = PrState::default();
        // Unregistered REGISTER with a non-zero reservation key conflicts.
        assert_eq!(
            s.out(A, sa::REGISTER, 0, 0, &params(5, 7)),
            Err(PrError::Conflict)
        );
        s.out(A, sa::REGISTER, 0, 0, &params(0, 7)).unwrap();
        assert_eq!(s.key_of(A), Some(7));
        assert_eq!(&s.read(0)[..4], &1u32.to_be_bytes());
        // Wrong key conflicts; right key changes it.
        assert_eq!(
            s.out(A, sa::REGISTER, 0, 0, &params(8, 9)),
            Err(PrError::Conflict)
        );
        s.out(A, sa::REGISTER, 0, 0, &params(7, 9)).unwrap();
        assert_eq!(s.key_of(A), Some(9));
        // REGISTER AND IGNORE ignores the key.
        s.out(A, sa::REGISTER_AND_IGNORE, 0, 0, &params(1234, 10))
            .unwrap();
        assert_eq!(s.key_of(A), Some(10));
        // Unregister.
        s.out(A, sa::REGISTER, 0, 0, &params(10, 0)).unwrap();
        assert_eq!(s.key_of(A), None);
        assert_eq!(&s.read(0)[..8], &[0, 0, 0, 4, 0, 0, 0, 0]);
        // Unsupported options.
        let mut p = params(0, 1);
        p.aptpl = true;
        assert_eq!(
            s.out(A, sa::REGISTER, 0, 0, &p),
            Err(PrError::Check(Sense::invalid_param(20, Some(0))))
        );
    }

    #[test]
    fn access_by_type() {
        // (type, registered B read, registered B write, unregistered C read, C write)
        let table = [
            (kind::EXCLUSIVE_ACCESS, false, false, false, false),
            (kind::WRITE_EXCLUSIVE, true, false, true, false),
            (kind::EXCLUSIVE_ACCESS_RO, true, true, false, false),
            (kind::WRITE_EXCLUSIVE_RO, true, true, true, false),
            (kind::EXCLUSIVE_ACCESS_AR, true, true, false, false),
            (kind::WRITE_EXCLUSIVE_AR, true, true, true, false),
        ];
        for (k, br, bw, cr, cw) in table {
            let mut s = PrState::default();
            reg(&mut s, A, 1);
            reg(&mut s, B, 2);
            s.out(A, sa::RESERVE, 0, k, &params(1, 0)).unwrap();
            assert!(!s.conflicts(A, Access::Read) && !s.conflicts(A, Access::Write));
            assert_eq!(!s.conflicts(B, Access::Read), br, "type {k}");
            assert_eq!(!s.conflicts(B, Access::Write), bw, "type {k}");
            assert_eq!(!s.conflicts(C, Access::Read), cr, "type {k}");
            assert_eq!(!s.conflicts(C, Access::Write), cw, "type {k}");
            assert!(!s.conflicts(C, Access::Allowed));
        }
    }

    #[test]
    fn read_reservation_reports_key_or_zero_for_all_registrants() {
        let mut s = PrState::default();
        reg(&mut s, A, 0xAA);
        assert_eq!(s.read(1), [0, 0, 0, 1, 0, 0, 0, 0]);
        s.out(A, sa::RESERVE, 0, kind::WRITE_EXCLUSIVE, &params(0xAA, 0))
            .unwrap();
        let d = s.read(1);
        assert_eq!(&d[4..8], &16u32.to_be_bytes());
        assert_eq!(&d[8..16], &0xAAu64.to_be_bytes());
        assert_eq!(d[21], kind::WRITE_EXCLUSIVE);
        s.out(A, sa::RELEASE, 0, kind::WRITE_EXCLUSIVE, &params(0xAA, 0))
            .unwrap();
        s.out(
            A,
            sa::RESERVE,
            0,
            kind::EXCLUSIVE_ACCESS_AR,
            &params(0xAA, 0),
        )
        .unwrap();
        let d = s.read(1);
        assert_eq!(&d[8..16], &[0; 8]);
        assert_eq!(d[21], kind::EXCLUSIVE_ACCESS_AR);
    }

    #[test]
    fn reserve_conflicts_and_release_rules() {
        let mut s = PrState::default();
        reg(&mut s, A, 1);
        reg(&mut s, B, 2);
        assert_eq!(
            s.out(C, sa::RESERVE, 0, kind::WRITE_EXCLUSIVE, &params(0, 0)),
            Err(PrError::Conflict),
            "unregistered"
        );
        assert_eq!(
            s.out(A, sa::RESERVE, 0, 2, &params(1, 0)),
            Err(PrError::Check(Sense::invalid_cdb(2, Some(0))))
        );
        s.out(A, sa::RESERVE, 0, kind::WRITE_EXCLUSIVE, &params(1, 0))
            .unwrap();
        // Same type again by the holder: no-op; another type or another port: conflict.
        s.out(A, sa::RESERVE, 0, kind::WRITE_EXCLUSIVE, &params(1, 0))
            .unwrap();
        assert_eq!(
            s.out(A, sa::RESERVE, 0, kind::EXCLUSIVE_ACCESS, &params(1, 0)),
            Err(PrError::Conflict)
        );
        assert_eq!(
            s.out(B, sa::RESERVE, 0, kind::WRITE_EXCLUSIVE, &params(2, 0)),
            Err(PrError::Conflict)
        );
        // Release by a non-holder is a no-op; wrong type is an invalid release.
        s.out(B, sa::RELEASE, 0, kind::WRITE_EXCLUSIVE, &params(2, 0))
            .unwrap();
        assert!(s.reserved());
        let e = s
            .out(A, sa::RELEASE, 0, kind::EXCLUSIVE_ACCESS, &params(1, 0))
            .unwrap_err();
        assert!(matches!(e, PrError::Check(x) if x.code == asc::INVALID_RELEASE_OF_PR));
        let uas = s
            .out(A, sa::RELEASE, 0, kind::WRITE_EXCLUSIVE, &params(1, 0))
            .unwrap();
        assert!(uas.is_empty(), "no UA when a WE reservation is released");
        assert!(!s.reserved());
        // Registrants-only release: RESERVATIONS RELEASED to the other registrants.
        s.out(A, sa::RESERVE, 0, kind::WRITE_EXCLUSIVE_RO, &params(1, 0))
            .unwrap();
        let uas = s
            .out(A, sa::RELEASE, 0, kind::WRITE_EXCLUSIVE_RO, &params(1, 0))
            .unwrap();
        assert_eq!(uas, vec![(B.to_string(), asc::RESERVATIONS_RELEASED)]);
    }

    #[test]
    fn holder_unregistering_releases_except_all_registrants() {
        for (k, still_reserved, ua) in [
            (kind::EXCLUSIVE_ACCESS, false, false),
            (kind::WRITE_EXCLUSIVE, false, false),
            (kind::EXCLUSIVE_ACCESS_RO, false, true),
            (kind::WRITE_EXCLUSIVE_RO, false, true),
            (kind::EXCLUSIVE_ACCESS_AR, true, false),
            (kind::WRITE_EXCLUSIVE_AR, true, false),
        ] {
            let mut s = PrState::default();
            reg(&mut s, A, 1);
            reg(&mut s, B, 2);
            s.out(A, sa::RESERVE, 0, k, &params(1, 0)).unwrap();
            let uas = s.out(A, sa::REGISTER, 0, 0, &params(1, 0)).unwrap();
            assert_eq!(s.reserved(), still_reserved, "type {k}");
            let want: UnitAttentions = if ua {
                vec![(B.to_string(), asc::RESERVATIONS_RELEASED)]
            } else {
                vec![]
            };
            assert_eq!(uas, want, "type {k}, no UA to the unregistering port");
            if still_reserved {
                // The remaining registrant holds it and can release it.
                s.out(B, sa::RELEASE, 0, k, &params(2, 0)).unwrap();
                assert!(!s.reserved());
            }
        }
    }

    #[test]
    fn clear_removes_everything_and_notifies_others() {
        let mut s = PrState::default();
        reg(&mut s, A, 1);
        reg(&mut s, B, 2);
        s.out(A, sa::RESERVE, 0, kind::EXCLUSIVE_ACCESS, &params(1, 0))
            .unwrap();
        assert_eq!(
            s.out(C, sa::CLEAR, 0, 0, &params(0, 0)),
            Err(PrError::Conflict)
        );
        let uas = s.out(B, sa::CLEAR, 0, 0, &params(2, 0)).unwrap();
        assert_eq!(uas, vec![(A.to_string(), asc::RESERVATIONS_PREEMPTED)]);
        assert!(!s.reserved() && !s.has_registrations());
    }

    #[test]
    fn preempt_registration_without_reservation() {
        let mut s = PrState::default();
        reg(&mut s, A, 1);
        reg(&mut s, B, 2);
        let gen0 = u32::from_be_bytes(s.read(0)[..4].try_into().unwrap());
        let uas = s
            .out(B, sa::PREEMPT, 0, kind::EXCLUSIVE_ACCESS, &params(2, 1))
            .unwrap();
        assert_eq!(uas, vec![(A.to_string(), asc::REGISTRATIONS_PREEMPTED)]);
        let keys = s.read(0);
        assert_eq!(u32::from_be_bytes(keys[..4].try_into().unwrap()), gen0 + 1);
        assert_eq!(&keys[4..16], &[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 2]);
        // Nothing holds key 99: conflict. SARK 0 without reservation: invalid parameter.
        assert_eq!(
            s.out(B, sa::PREEMPT, 0, 1, &params(2, 99)),
            Err(PrError::Conflict)
        );
        assert_eq!(
            s.out(B, sa::PREEMPT, 0, 1, &params(2, 0)),
            Err(PrError::Check(Sense::invalid_param(8, None)))
        );
    }

    #[test]
    fn preempt_holder_takes_over_reservation() {
        let mut s = PrState::default();
        reg(&mut s, A, 1);
        reg(&mut s, B, 2);
        s.out(A, sa::RESERVE, 0, kind::EXCLUSIVE_ACCESS, &params(1, 0))
            .unwrap();
        let uas = s
            .out(
                B,
                sa::PREEMPT_AND_ABORT,
                0,
                kind::WRITE_EXCLUSIVE,
                &params(2, 1),
            )
            .unwrap();
        assert_eq!(uas, vec![(A.to_string(), asc::REGISTRATIONS_PREEMPTED)]);
        assert!(s.is_holder(B) && !s.is_holder(A));
        assert_eq!(s.read(1)[21], kind::WRITE_EXCLUSIVE);
        assert_eq!(s.key_of(A), None);
    }

    #[test]
    fn preempt_all_registrants_with_zero_key() {
        let mut s = PrState::default();
        reg(&mut s, A, 1);
        reg(&mut s, B, 2);
        reg(&mut s, C, 3);
        s.out(A, sa::RESERVE, 0, kind::WRITE_EXCLUSIVE_AR, &params(1, 0))
            .unwrap();
        let mut uas = s
            .out(B, sa::PREEMPT, 0, kind::EXCLUSIVE_ACCESS, &params(2, 0))
            .unwrap();
        uas.sort();
        assert_eq!(
            uas,
            vec![
                (A.to_string(), asc::REGISTRATIONS_PREEMPTED),
                (C.to_string(), asc::REGISTRATIONS_PREEMPTED)
            ]
        );
        assert!(s.is_holder(B));
        assert_eq!(s.read(1)[21], kind::EXCLUSIVE_ACCESS);
    }

    #[test]
    fn report_capabilities_and_full_status() {
        let mut s = PrState::default();
        assert_eq!(s.read(2), [0, 8, 0x10, 0x80, 0xEA, 0x01, 0, 0]);
        reg(&mut s, A, 1);
        s.out(A, sa::RESERVE, 0, kind::WRITE_EXCLUSIVE, &params(1, 0))
            .unwrap();
        let d = s.read(3);
        let tid = transport_id(A);
        assert_eq!(tid.len() % 4, 0);
        assert_eq!(&tid[..2], &[0x45, 0]);
        assert_eq!(
            u32::from_be_bytes(d[4..8].try_into().unwrap()) as usize,
            24 + tid.len()
        );
        assert_eq!(&d[8..16], &1u64.to_be_bytes());
        assert_eq!((d[20], d[21]), (0x01, kind::WRITE_EXCLUSIVE));
        assert_eq!(&d[26..28], &[0, 1]);
        assert_eq!(&d[32..], &tid[..]);
    }
}
