//! Partitioners for keyed records: murmur2 of the key bytes, made positive, modulo the
//! partition count. Kafka's own (the Java client's, and kafkajs 2's default) for the event
//! topics the domain services produce, and kafkajs' legacy variant, which the original BFF
//! used for its commands (contract §0.2).

/// Kafka's `Utils.murmur2` (seed `0x9747b28c`).
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = 0x9747_b28c ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner picks for `key` among `partitions`.
pub fn murmur2_partition(key: &[u8], partitions: usize) -> i32 {
    let positive = (murmur2(key) & 0x7fff_ffff) as u32;
    (positive % partitions.max(1) as u32) as i32
}

/// kafkajs' `LegacyPartitioner` hash, which the original BFF's producer uses (contract §0.2),
/// bit for bit. It is Java's murmur2 written with JavaScript numbers, and so differs from it:
/// every product is a double (rounded beyond 2^53) before `^` and `>>>` truncate it to 32
/// bits, and the word loop runs `length / 4` times rounded up, reading zeros past the end
/// (the last bytes then count twice).
pub fn murmur2_legacy(data: &[u8]) -> i32 {
    const M: f64 = 1_540_483_477.0; // 0x5bd1e995
    // JavaScript's ToInt32 and ToUint32 of a finite number.
    fn int32(d: f64) -> i32 {
        uint32(d) as i32
    }
    fn uint32(d: f64) -> u32 {
        d.trunc().rem_euclid(4_294_967_296.0) as u32
    }
    let len = data.len();
    let byte = |i: usize| i32::from(data.get(i).copied().unwrap_or(0));
    let mut h = f64::from(0x9747_b28c_u32 as i32 ^ len as i32);
    for i in 0..len.div_ceil(4) {
        let i4 = i * 4;
        let mut k = f64::from(byte(i4))
            + f64::from(byte(i4 + 1) << 8)
            + f64::from(byte(i4 + 2) << 16)
            + f64::from(((byte(i4 + 3) as u32) << 24) as i32);
        k *= M;
        k = f64::from(int32(k) ^ (uint32(k) >> 24) as i32);
        k *= M;
        h *= M;
        h = f64::from(int32(h) ^ int32(k));
    }
    let (rest, base) = (len % 4, len & !3);
    if rest >= 3 {
        h = f64::from(int32(h) ^ (byte(base + 2) << 16));
    }
    if rest >= 2 {
        h = f64::from(int32(h) ^ (byte(base + 1) << 8));
    }
    if rest >= 1 {
        h = f64::from(int32(h) ^ byte(base));
        h *= M;
    }
    h = f64::from(int32(h) ^ (uint32(h) >> 13) as i32);
    h *= M;
    int32(h) ^ (uint32(h) >> 15) as i32
}

/// The partition kafkajs' `LegacyPartitioner` picks for `key` among `partitions`.
pub fn legacy_partition(key: &[u8], partitions: usize) -> i32 {
    let positive = (murmur2_legacy(key) & 0x7fff_ffff) as u32;
    (positive % partitions.max(1) as u32) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_legacy_hash_matches_kafkajs() {
        // kafkajs 2.2.4, src/producer/partitioners/legacy/murmur2.js, run with Node 20:
        // the hash, then the partition among 1, 2, 3, 5, 7 and 12.
        let cases: [(&str, i32, [i32; 6]); 19] = [
            ("", 275_646_684, [0, 0, 0, 4, 5, 0]),
            ("a", -809_885_833, [0, 1, 1, 0, 1, 7]),
            ("ab", -1_686_076_413, [0, 1, 2, 0, 2, 11]),
            ("abc", 1_545_667_907, [0, 1, 2, 2, 0, 11]),
            ("abcd", -2_139_815_384, [0, 0, 0, 4, 2, 0]),
            ("21", -595_812_486, [0, 0, 2, 2, 6, 2]),
            ("foobar", -309_133_275, [0, 1, 2, 3, 6, 5]),
            ("cryptotopcoins", 10_731_847, [0, 1, 1, 2, 0, 7]),
            ("cryptotopmovers", -1_075_049_766, [0, 0, 2, 2, 2, 2]),
            ("stocktopperformers", -1_860_960_214, [0, 0, 1, 4, 1, 10]),
            ("topglobalnews", -898_822_695, [0, 1, 2, 3, 1, 5]),
            (
                "a-little-bit-long-string",
                2_065_008_938,
                [0, 0, 2, 3, 6, 2],
            ),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                1_360_862_267,
                [0, 1, 2, 2, 2, 11],
            ),
            ("Zq3_xY9-AbCdEfGhIjKl", -856_639_774, [0, 0, 1, 4, 5, 10]),
            ("bXk1-QZ8mN2pL4rT6vWy", 681_213_620, [0, 0, 2, 0, 3, 8]),
            ("\u{ff}\u{fe}\u{fd}", -1_575_567_057, [0, 1, 2, 1, 1, 11]),
            ("\u{20ac}\u{20ac}", -520_891_420, [0, 0, 1, 3, 2, 4]),
            ("BTC-USD", 555_263_025, [0, 1, 0, 0, 2, 9]),
            ("\u{e9}t\u{e9} \u{e0} Pune", 30_221_978, [0, 0, 2, 3, 3, 2]),
        ];
        for (key, hash, partitions) in cases {
            assert_eq!(murmur2_legacy(key.as_bytes()), hash, "{key:?}");
            for (n, expected) in [1, 2, 3, 5, 7, 12].into_iter().zip(partitions) {
                assert_eq!(
                    legacy_partition(key.as_bytes(), n),
                    expected,
                    "{key:?} among {n}"
                );
            }
        }
    }

    #[test]
    fn matches_the_reference_vectors_of_kafkas_utils_test() {
        // org.apache.kafka.common.utils.UtilsTest#testMurmur2
        let cases: [(&str, i32); 6] = [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input.as_bytes()), expected, "{input}");
        }
    }

    #[test]
    fn partitions_are_in_range() {
        for n in 1..8 {
            let p = murmur2_partition(b"BTC-USD", n);
            assert!((0..n as i32).contains(&p));
        }
    }
}
