//! flux-bff patch: hints to the processor.

/// The size of a cache line on the processors this runs on (x86_64).
const LINE: usize = 64;

/// Starts loading the cache lines of `value` without waiting for them: a loop over many
/// sockets asks for the next ones' lines while it writes this one, instead of stalling on
/// each in turn. No effect where the architecture has no stable prefetch.
#[inline(always)]
pub fn prefetch<T>(value: &T) {
    for line in lines((value as *const T).cast(), size_of::<T>()) {
        prefetch_line(line);
    }
}

/// The starts of the cache lines that `size` bytes at `start` span (one at least).
#[inline(always)]
fn lines(start: *const i8, size: usize) -> impl Iterator<Item = *const i8> {
    let offset = start.addr() % LINE;
    let first = start.wrapping_sub(offset);
    (0..(offset + size.max(1)).div_ceil(LINE)).map(move |line| first.wrapping_add(line * LINE))
}

#[inline(always)]
fn prefetch_line(addr: *const i8) {
    // SAFETY: SSE, which the instruction needs, is part of every x86_64 processor; a
    // prefetch reads nothing the program sees and never faults, whatever the address.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(addr);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The line starts of `size` bytes at address `at`, as addresses.
    fn spanned(at: usize, size: usize) -> Vec<usize> {
        lines(std::ptr::without_provenance(at), size)
            .map(|line| line.addr())
            .collect()
    }

    #[test]
    fn a_value_is_prefetched_in_every_line_it_spans() {
        assert_eq!(spanned(4096, 64), [4096]);
        assert_eq!(spanned(4096, 65), [4096, 4160]);
        assert_eq!(spanned(4096 + 60, 8), [4096, 4160]);
        assert_eq!(spanned(4096 + 63, 130), [4096, 4160, 4224, 4288]);
        assert_eq!(
            spanned(4096 + 8, 0),
            [4096],
            "a zero-sized value still names a line"
        );
    }
}
