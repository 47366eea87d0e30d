//! Two tricks that make the consume loops run at the speed of memory rather than at the speed of
//! a chain of dependent loads.
//!
//! In both buffers the next record's position is this record's position plus a length read
//! from this record's header, so every header load waits for the previous one: about 10 cycles
//! per record however fast memory streams. [`Stride`] predicts the next position from the last
//! record size and checks the prediction behind a (well predicted) branch, so the CPU starts the
//! next header load before this one has arrived. [`prefetch`] asks for the cache lines a little
//! further on, which the hardware prefetcher of a virtual machine often does not.

use crate::Error;

/// A record the protocol cannot produce, as a pulled batch keeps it until it is settled: plain
/// data, which the batch can hold without a destructor (one would keep the batch, and so its
/// cursor, in memory rather than in the caller's registers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Corruption {
    pub transport: &'static str,
    pub position: u64,
    pub length: u64,
    pub reason: &'static str,
}

impl Corruption {
    /// The error the next call on the consumer reports.
    pub fn into_error(self) -> Error {
        Error::Corrupt { transport: self.transport, position: self.position, length: self.length, reason: self.reason }
    }
}

/// Bytes ahead of the current record that [`prefetch`] asks for.
pub(crate) const PREFETCH_AHEAD: usize = 2048;

/// The state of a record walk that outlives one stretch (`ringbuf::Walk::records`,
/// `perfbuf`'s `Walk::samples`): kept in locals of the loop, so in registers.
pub(crate) struct Walk {
    /// Records still to hand over before `max` is reached.
    pub left: usize,
    /// Payload bytes handed over.
    pub bytes: u64,
    /// The next record's size predicted: most streams repeat one.
    pub stride: Stride,
    /// The ring's prediction of the next length word, from which it derives the record size
    /// (a perf walk predicts the size alone, in `stride`).
    pub len: u32,
}

impl Walk {
    /// A walk that hands over at most `max` records, first expecting records of `size` bytes.
    pub fn new(max: usize, size: u64) -> Self {
        Walk { left: max, bytes: 0, stride: Stride::new(size), len: 0 }
    }
}

/// The size of the records seen last: the prediction of the next record's size.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stride(u64);

impl Stride {
    /// Starts predicting records of `size` bytes.
    pub fn new(size: u64) -> Self {
        Stride(size)
    }

    /// The predicted size: the last one seen.
    #[inline(always)]
    pub fn size(self) -> u64 {
        self.0
    }

    /// `position + actual`, computed so that it does not wait for `actual` when `actual` is the
    /// predicted size: the common path adds the prediction, and only a size change takes the
    /// (out-of-line) path that adds `actual`.
    #[inline(always)]
    pub fn next(&mut self, position: u64, actual: u64) -> u64 {
        if actual != self.0 {
            self.0 = actual;
            return resync(position, actual);
        }
        position + self.0
    }
}

/// The prediction missed: the slow, correct sum (out of line, so the compiler cannot turn the
/// branch into a conditional move that would wait for `actual` again).
#[cold]
#[inline(never)]
fn resync(position: u64, actual: u64) -> u64 {
    position + actual
}

/// Hints the CPU to load the cache line at `address` (which may lie anywhere, mapped or not: a
/// prefetch never faults and reads nothing into the program).
#[inline(always)]
pub(crate) fn prefetch(address: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is a hint with no architectural effect: it cannot fault, whatever the
    // address, and the program observes no memory through it. SSE is baseline on x86_64.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(address.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stride_adds_the_actual_size_whatever_the_prediction() {
        let mut stride = Stride::new(16);
        let mut position = 0;
        for size in [16, 16, 24, 24, 8, 4096, 16] {
            let next = stride.next(position, size);
            assert_eq!(next, position + size);
            position = next;
        }
        prefetch(std::ptr::null());
        prefetch(usize::MAX as *const u8);
    }
}
