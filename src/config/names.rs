//! Validated names: client and image names, iSCSI names (IQN), subnets, address ranges of
//! either family ([`Net`]); MAC addresses are [`crate::mac::MacAddr`] (re-exported here).

pub use crate::mac::MacAddr;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Longest client or image name (it becomes part of a target IQN and of file names).
pub const MAX_NAME_LEN: usize = 63;
/// Longest iSCSI name (RFC 7143 §4.2.7.1).
pub const MAX_IQN_LEN: usize = 223;

/// Lower-case letters, digits, `-` and `.`; starts and ends with a letter or digit; at most
/// [`MAX_NAME_LEN`]. Upper case is folded to lower case.
fn check_name(what: &str, s: &str) -> Result<String, String> {
    let l = s.to_ascii_lowercase();
    let ok = !l.is_empty()
        && l.len() <= MAX_NAME_LEN
        && l.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && l.as_bytes()[0].is_ascii_alphanumeric()
        && l.as_bytes()[l.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(l)
    } else {
        Err(format!(
            "bad {what} {s:?} (use 1 to {MAX_NAME_LEN} letters, digits, '-' or '.', starting and ending with a letter or digit)"
        ))
    }
}

macro_rules! name_type {
    ($(#[$m:meta])* $t:ident, $what:expr) => {
        $(#[$m])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $t(String);

        impl $t {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<$t, String> {
                check_name($what, s).map($t)
            }
        }
        impl TryFrom<String> for $t {
            type Error = String;
            fn try_from(s: String) -> Result<$t, String> {
                s.parse()
            }
        }
        impl From<$t> for String {
            fn from(n: $t) -> String {
                n.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($t), self.0)
            }
        }
    };
}

name_type!(
    /// A client's name: part of its target IQN and of its overlay's file name.
    ClientName,
    "client name"
);
name_type!(
    /// An image's name.
    ImageName,
    "image name"
);

/// An iSCSI name (`iqn.`, `eui.` or `naa.` form, RFC 7143 §4.2.7), folded to lower case.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Iqn(String);

impl Iqn {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// `self:suffix` (suffix already valid name characters).
    pub fn join(&self, suffix: &str) -> Result<Iqn, String> {
        format!("{}:{suffix}", self.0).parse()
    }
}

impl FromStr for Iqn {
    type Err = String;
    fn from_str(s: &str) -> Result<Iqn, String> {
        let l = s.to_ascii_lowercase();
        let bad = |why: &str| format!("bad iSCSI name {s:?}: {why}");
        if l.len() > MAX_IQN_LEN {
            return Err(bad("longer than 223 bytes"));
        }
        if let Some(rest) = l.strip_prefix("iqn.") {
            // iqn.YYYY-MM.reversed.domain[:anything]
            let b = rest.as_bytes();
            let date_ok = b.len() > 8
                && b[..4].iter().all(u8::is_ascii_digit)
                && b[4] == b'-'
                && b[5..7].iter().all(u8::is_ascii_digit)
                && b[7] == b'.'
                && matches!(
                    &rest[5..7],
                    "01" | "02"
                        | "03"
                        | "04"
                        | "05"
                        | "06"
                        | "07"
                        | "08"
                        | "09"
                        | "10"
                        | "11"
                        | "12"
                );
            if !date_ok {
                return Err(bad("expected iqn.YYYY-MM.<reversed domain>[:<name>]"));
            }
            let chars_ok = rest[8..].bytes().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'.' | b':')
            });
            let auth = rest[8..].split(':').next().unwrap_or("");
            if !chars_ok || auth.is_empty() || auth.starts_with('.') || auth.ends_with('.') {
                return Err(bad(
                    "use only letters, digits, '-', '.' and ':' after the date",
                ));
            }
            return Ok(Iqn(l));
        }
        for (p, lens) in [("eui.", &[16usize][..]), ("naa.", &[16, 32][..])] {
            if let Some(h) = l.strip_prefix(p) {
                if lens.contains(&h.len()) && h.bytes().all(|c| c.is_ascii_hexdigit()) {
                    return Ok(Iqn(l));
                }
                return Err(bad("wrong number of hex digits"));
            }
        }
        Err(bad("must start with iqn., eui. or naa."))
    }
}

impl TryFrom<String> for Iqn {
    type Error = String;
    fn try_from(s: String) -> Result<Iqn, String> {
        s.parse()
    }
}
impl From<Iqn> for String {
    fn from(n: Iqn) -> String {
        n.0
    }
}
impl fmt::Display for Iqn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for Iqn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Iqn({:?})", self.0)
    }
}

/// An IPv4 subnet, `192.168.50.0/24`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    /// The subnet of `addr` with `prefix` bits.
    pub fn of(addr: Ipv4Addr, prefix: u8) -> Result<Subnet, String> {
        if !(1..=30).contains(&prefix) {
            return Err(format!("prefix length /{prefix} out of range (1..=30)"));
        }
        Ok(Subnet {
            network: Ipv4Addr::from(u32::from(addr) & Subnet::mask_bits(prefix)),
            prefix,
        })
    }
    fn mask_bits(prefix: u8) -> u32 {
        u32::MAX << (32 - prefix as u32)
    }
    pub fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(Subnet::mask_bits(self.prefix))
    }
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !Subnet::mask_bits(self.prefix))
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Subnet::mask_bits(self.prefix) == u32::from(self.network)
    }
    /// Inside, and neither the network nor the broadcast address.
    pub fn host(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && ip != self.network && ip != self.broadcast()
    }
}

impl FromStr for Subnet {
    type Err = String;
    fn from_str(s: &str) -> Result<Subnet, String> {
        let bad = || format!("bad subnet {s:?} (expected like 192.168.50.0/24)");
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let a: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let p: u8 = p.parse().map_err(|_| bad())?;
        Subnet::of(a, p)
    }
}
impl TryFrom<String> for Subnet {
    type Error = String;
    fn try_from(s: String) -> Result<Subnet, String> {
        s.parse()
    }
}
impl From<Subnet> for String {
    fn from(n: Subnet) -> String {
        n.to_string()
    }
}
impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}
impl fmt::Debug for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Subnet({self})")
    }
}

/// A block of addresses of either family, `10.0.0.0/8` or `fd00::/8` (a bare address is a
/// block of one). Used for "who may use this" lists.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    pub const LOOPBACK_V4: Net = Net {
        addr: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)),
        prefix: 8,
    };
    pub const LOOPBACK_V6: Net = Net {
        addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
        prefix: 128,
    };

    /// The block of `addr` with `prefix` leading bits (host bits are cleared).
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Net, String> {
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > bits {
            return Err(format!(
                "prefix length /{prefix} is longer than {bits} bits"
            ));
        }
        let masked = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & Net::mask32(prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & Net::mask128(prefix))),
        };
        Ok(Net {
            addr: masked,
            prefix,
        })
    }
    fn mask32(prefix: u8) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
    }
    fn mask128(prefix: u8) -> u128 {
        u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
    }
    /// Is `ip` inside? An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, how a dual-stack socket
    /// reports IPv4 peers) counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                u32::from(a) & Net::mask32(self.prefix) == u32::from(n)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                u128::from(a) & Net::mask128(self.prefix) == u128::from(n)
            }
            _ => false,
        }
    }
}

impl FromStr for Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Net, String> {
        let bad = || format!("bad network {s:?} (expected like 10.0.0.0/8, fd00::/8 or 10.0.0.5)");
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let prefix = match p {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        Net::new(addr, prefix)
    }
}
impl TryFrom<String> for Net {
    type Error = String;
    fn try_from(s: String) -> Result<Net, String> {
        s.parse()
    }
}
impl From<Net> for String {
    fn from(n: Net) -> String {
        n.to_string()
    }
}
impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}
impl fmt::Debug for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Net({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nets() {
        let n: Net = "10.1.2.3/8".parse().unwrap();
        assert_eq!(n.to_string(), "10.0.0.0/8");
        assert!(n.contains("10.255.0.1".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(
            n.contains("::ffff:10.9.9.9".parse().unwrap()),
            "v4-mapped peers"
        );
        assert!(!n.contains("fd00::1".parse().unwrap()));
        let one: Net = "192.168.1.5".parse().unwrap();
        assert!(one.contains("192.168.1.5".parse().unwrap()));
        assert!(!one.contains("192.168.1.6".parse().unwrap()));
        let v6: Net = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fdab::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert!(Net::LOOPBACK_V6.contains("::1".parse().unwrap()));
        assert!(Net::LOOPBACK_V4.contains("127.0.0.2".parse().unwrap()));
        let any: Net = "0.0.0.0/0".parse().unwrap();
        assert!(any.contains("8.8.8.8".parse().unwrap()));
        for bad in ["10.0.0.0/33", "::/129", "x/8", "10.0.0.0/", ""] {
            assert!(bad.parse::<Net>().is_err(), "{bad}");
        }
    }

    #[test]
    fn macs() {
        let m: MacAddr = "52:54:00:AB:cd:01".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:01");
        assert_eq!(m.dashed(), "52-54-00-ab-cd-01");
        assert_eq!("52-54-00-ab-cd-01".parse::<MacAddr>().unwrap(), m);
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:01:02",
            "52:54:00:ab:cd:1",
            "zz:54:00:ab:cd:01",
            "01:00:5e:00:00:01",
            "ff:ff:ff:ff:ff:ff",
            "00:00:00:00:00:00",
            "52:54-00:ab:cd:01",
            "+5:54:00:ab:cd:01",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert_eq!("Lab-PC1".parse::<ClientName>().unwrap().as_str(), "lab-pc1");
        for bad in ["", "-a", "a-", "a b", "a/b", "a:b", "ä", &"x".repeat(64)] {
            assert!(bad.parse::<ClientName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn iqns() {
        for good in [
            "iqn.2026-11.org.isboot",
            "iqn.2026-11.org.isboot:pc1",
            "IQN.1993-08.org.debian:01:abc",
            "eui.02004567A425678D",
            "naa.52004567BA64678D",
        ] {
            assert!(good.parse::<Iqn>().is_ok(), "{good}");
        }
        assert_eq!(
            "IQN.2026-11.Org.X:A".parse::<Iqn>().unwrap().as_str(),
            "iqn.2026-11.org.x:a"
        );
        for bad in [
            "",
            "iqn.",
            "iqn.2026-13.org.x",
            "iqn.26-11.org.x",
            "iqn.2026-11.",
            "iqn.2026-11.org x",
            "iqn.2026-11.org/x",
            "eui.123",
            "naa.xyz",
            "foo.bar",
            &format!("iqn.2026-11.org.x:{}", "a".repeat(220)),
        ] {
            assert!(bad.parse::<Iqn>().is_err(), "{bad}");
        }
    }

    #[test]
    fn subnets() {
        let s: Subnet = "192.168.50.7/24".parse().unwrap();
        assert_eq!(s.to_string(), "192.168.50.0/24");
        assert_eq!(s.broadcast(), Ipv4Addr::new(192, 168, 50, 255));
        assert_eq!(s.mask(), Ipv4Addr::new(255, 255, 255, 0));
        assert!(s.host(Ipv4Addr::new(192, 168, 50, 9)));
        assert!(!s.host(Ipv4Addr::new(192, 168, 50, 255)));
        assert!(!s.host(Ipv4Addr::new(192, 168, 51, 9)));
        assert!("10.0.0.0/31".parse::<Subnet>().is_err());
        assert!("10.0.0.0".parse::<Subnet>().is_err());
    }
}
