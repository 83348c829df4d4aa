//! RFC 1982 serial number arithmetic on 32-bit sequence numbers (CmdSN, StatSN, DataSN).

/// `a < b` in serial arithmetic. Undefined pairs (exactly 2^31 apart) compare as not-less.
#[inline]
pub fn lt(a: u32, b: u32) -> bool {
    a != b && (b.wrapping_sub(a) as i32) > 0
}

/// `a <= b` in serial arithmetic.
#[inline]
pub fn le(a: u32, b: u32) -> bool {
    a == b || lt(a, b)
}

/// Is `x` inside the window `[lo, hi]` (serial arithmetic)?
#[inline]
pub fn in_window(x: u32, lo: u32, hi: u32) -> bool {
    le(lo, x) && le(x, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_around() {
        assert!(lt(1, 2));
        assert!(!lt(2, 1));
        assert!(lt(u32::MAX, 0));
        assert!(lt(u32::MAX - 5, 3));
        assert!(!lt(3, u32::MAX - 5));
        assert!(!lt(7, 7));
        assert!(le(7, 7));
        assert!(in_window(0, u32::MAX - 1, 5));
        assert!(!in_window(6, u32::MAX - 1, 5));
        assert!(!in_window(u32::MAX - 2, u32::MAX - 1, 5));
        // Exactly 2^31 apart is undefined: neither is less.
        assert!(!lt(0, 1 << 31) && !lt(1 << 31, 0));
    }
}
