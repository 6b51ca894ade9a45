//! IPv4 prefixes (`10.244.1.0/24`): parsing, membership and the addresses a pod range
//! may hand out.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Errors parsing a CIDR.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    /// The text is not `ADDRESS/PREFIX` with an IPv4 address and a prefix of 0 to 32.
    #[error("{0:?} is not an IPv4 CIDR (ADDRESS/PREFIX)")]
    Syntax(String),
    /// Bits are set below the prefix (`10.244.1.5/24` instead of `10.244.1.0/24`).
    #[error("{0:?} has host bits set")]
    HostBits(String),
}

/// An IPv4 network: the network address and the prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Cidr {
    /// The network `network/prefix`; fails when host bits are set or the prefix is > 32.
    pub fn new(network: Ipv4Addr, prefix: u8) -> Result<Self, CidrError> {
        if prefix > 32 {
            return Err(CidrError::Syntax(format!("{network}/{prefix}")));
        }
        let cidr = Ipv4Cidr { network, prefix };
        if u32::from(network) & !cidr.mask() != 0 {
            return Err(CidrError::HostBits(format!("{network}/{prefix}")));
        }
        Ok(cidr)
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    /// The broadcast (last) address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }

    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    /// Addresses usable by hosts: all but the network and broadcast addresses (for /31
    /// and /32, none: a pod range needs room for a gateway and pods).
    pub fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> + use<> {
        let first = u32::from(self.network);
        let last = u32::from(self.broadcast());
        // /31 and /32 have no host range: an empty one.
        let (start, end) = if self.prefix >= 31 {
            (1, 0)
        } else {
            (first + 1, last - 1)
        };
        (start..=end).map(Ipv4Addr::from)
    }

    /// The first host address (the gateway by convention).
    pub fn first_host(&self) -> Option<Ipv4Addr> {
        self.hosts().next()
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || CidrError::Syntax(s.to_string());
        let (addr, prefix) = s.split_once('/').ok_or_else(syntax)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
        let prefix: u8 = prefix.parse().map_err(|_| syntax())?;
        if prefix > 32 {
            return Err(syntax());
        }
        Ipv4Cidr::new(addr, prefix).map_err(|e| match e {
            CidrError::HostBits(_) => CidrError::HostBits(s.to_string()),
            CidrError::Syntax(_) => syntax(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_bounds() {
        let c: Ipv4Cidr = "10.244.1.0/24".parse().unwrap();
        assert_eq!(c.broadcast(), Ipv4Addr::new(10, 244, 1, 255));
        assert_eq!(c.first_host(), Some(Ipv4Addr::new(10, 244, 1, 1)));
        assert_eq!(c.hosts().count(), 254);
        assert!(c.contains(Ipv4Addr::new(10, 244, 1, 77)));
        assert!(!c.contains(Ipv4Addr::new(10, 244, 2, 1)));
        assert_eq!(c.to_string(), "10.244.1.0/24");
        let small: Ipv4Cidr = "10.0.0.0/30".parse().unwrap();
        assert_eq!(
            small.hosts().collect::<Vec<_>>(),
            vec![Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)]
        );
        assert_eq!(
            "10.0.0.0/31".parse::<Ipv4Cidr>().unwrap().hosts().count(),
            0
        );
    }

    #[test]
    fn rejects_garbage_and_host_bits() {
        for bad in ["", "10.0.0.0", "10.0.0.0/33", "x/24", "10.0.0.0/-1", "::/0"] {
            assert!(
                matches!(bad.parse::<Ipv4Cidr>(), Err(CidrError::Syntax(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            "10.0.0.5/24".parse::<Ipv4Cidr>(),
            Err(CidrError::HostBits(_))
        ));
    }
}
