//! The MAC address type every layer shares: the client registry (`config`), DHCP (`dhcp`:
//! chaddr, leases, flood limits) and the service (ARP entries, power-on hooks).
//!
//! Text forms: `aa:bb:cc:dd:ee:ff` (what [`Display`](fmt::Display) writes) and
//! `aa-bb-cc-dd-ee-ff` ([`MacAddr::dashed`], the default client name); both parse.
//! [`FromStr`] (and serde, for the registry) accepts only addresses a NIC can have (not
//! multicast or broadcast, not all zeros): what a client may be registered with.
//! [`MacAddr::parse_any`] and the [`any`] serde module accept every address, for data that
//! records what arrived on the wire (lease files).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// An Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// `aa-bb-cc-dd-ee-ff`, the default client name.
    pub fn dashed(&self) -> String {
        self.to_string().replace(':', "-")
    }

    /// True for an address a NIC can have: unicast (I/G bit clear) and not all zeros.
    pub fn is_nic(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }

    /// Parse six hex pairs separated by `:` or `-`, any address (multicast and zero too).
    pub fn parse_any(s: &str) -> Result<MacAddr, String> {
        let bad =
            || format!("bad MAC address {s:?} (expected six hex pairs like 52:54:00:12:34:56)");
        let sep = if s.contains(':') { ':' } else { '-' };
        let mut m = [0u8; 6];
        let mut parts = s.split(sep);
        for b in m.iter_mut() {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(m))
    }
}

/// Parses a NIC's address (see the module doc); the errors say what is wrong.
impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<MacAddr, String> {
        let m = MacAddr::parse_any(s)?;
        if m.0[0] & 1 != 0 {
            return Err(format!(
                "bad MAC address {s:?}: a multicast/broadcast address, not a NIC's"
            ));
        }
        if m.0 == [0; 6] {
            return Err(format!("bad MAC address {s:?}: all zeros"));
        }
        Ok(m)
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(b: [u8; 6]) -> MacAddr {
        MacAddr(b)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

impl TryFrom<String> for MacAddr {
    type Error = String;
    fn try_from(s: String) -> Result<MacAddr, String> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.to_string()
    }
}

/// Serde for any address (`#[serde(with = "crate::mac::any")]`): written as
/// `aa:bb:cc:dd:ee:ff`, read with [`MacAddr::parse_any`].
pub mod any {
    use super::MacAddr;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(m: &MacAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(m)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<MacAddr, D::Error> {
        let s = String::deserialize(d)?;
        MacAddr::parse_any(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_parse_and_print() {
        let m: MacAddr = "52:54:00:AB:cd:0e".parse().unwrap();
        assert_eq!(m.0, [0x52, 0x54, 0, 0xab, 0xcd, 0x0e]);
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0e");
        assert_eq!(m.dashed(), "52-54-00-ab-cd-0e");
        assert_eq!(m.dashed().parse::<MacAddr>(), Ok(m));
        assert_eq!(format!("{m:?}"), "MacAddr(52:54:00:ab:cd:0e)");
    }

    #[test]
    fn only_nic_addresses_parse_strictly_but_any_address_parses_leniently() {
        for s in [
            "01:00:5e:00:00:01",
            "ff:ff:ff:ff:ff:ff",
            "00:00:00:00:00:00",
        ] {
            assert!(s.parse::<MacAddr>().is_err(), "{s}");
            let m = MacAddr::parse_any(s).unwrap();
            assert!(!m.is_nic());
            assert_eq!(m.to_string(), s);
        }
        assert!(MacAddr([2, 0, 0, 0, 0, 1]).is_nic());
    }

    #[test]
    fn malformed_addresses_are_refused() {
        for s in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "5:54:00:12:34:56",
            "52:54:00:12:34:5g",
            "52:54-00:12:34:56",
            "525400123456",
            "+5:54:00:12:34:56",
        ] {
            assert!(MacAddr::parse_any(s).is_err(), "{s}");
            assert!(s.parse::<MacAddr>().is_err(), "{s}");
        }
    }

    #[test]
    fn serde_strict_and_any() {
        #[derive(Serialize, Deserialize)]
        struct Lease {
            #[serde(with = "any")]
            mac: MacAddr,
        }
        let l: Lease = serde_json::from_str(r#"{"mac":"01:00:5e:00:00:01"}"#).unwrap();
        assert_eq!(l.mac.0[0], 1);
        assert_eq!(
            serde_json::to_string(&l).unwrap(),
            r#"{"mac":"01:00:5e:00:00:01"}"#
        );
        assert!(serde_json::from_str::<MacAddr>(r#""01:00:5e:00:00:01""#).is_err());
        assert!(serde_json::from_str::<Lease>(r#"{"mac":"zz"}"#).is_err());
    }
}
