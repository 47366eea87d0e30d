//! The consume loop both transports share: read the producer's position once per batch, hand
//! the records below it to the transport's parser one at a time, and publish the consumer
//! position every `publish_every` bytes within a batch and once at the end, so that a long
//! drain returns space to the producers as it goes.
//!
//! ```text
//!  start            published        done              end = producer - start
//!    |-- published ---|-- read, not yet --|-- written, not --|
//!                         published          read yet
//! ```
//!
//! Positions are free-running and wrap at 2^64 as the kernel's do; the loop counts bytes from
//! where it started (`done`, `end`), which stay below two rings. A producer more than a ring
//! ahead is an [`Error::Corrupt`]; the parser is told how many written bytes follow each record
//! start (`room <= size`), so that every record it accepts lies within one ring's worth of bytes.

use crate::scan::Stride;
use crate::Error;

/// What the parser did with the record at the current position.
pub(crate) enum Step {
    /// Consumed a record of this many bytes (header and padding included).
    Took(u64),
    /// Stop before this record: it is still being written, or enough was handed over.
    Stop,
}

/// The fixed parameters of one pass.
pub(crate) struct Ring {
    /// `"ring"` or `"perf"`, for [`Error::Corrupt`].
    pub transport: &'static str,
    /// Size of the data area in bytes (a power of two).
    pub size: u64,
    /// Publish the consumer position at least every this many bytes.
    pub publish_every: u64,
    /// The smallest record: the first guess of [`Stride`].
    pub min_record: u64,
    /// What a producer position more than one ring ahead is called in the error.
    pub too_far_ahead: &'static str,
}

/// Runs one pass from consumer position `start`: `producer()` reads the producer position
/// (with acquire ordering), `publish(position)` stores the consumer position (with release
/// ordering), and `parse(position, room)` consumes the record at `position`, of which `room`
/// bytes are written. Stops when the parser says so, when the ring is empty, after one ring's
/// worth of bytes (a producer faster than the handler must not keep us here forever), or at
/// the parser's first error; what was consumed before is published in every case.
#[inline(always)]
pub(crate) fn run(
    ring: &Ring,
    start: u64,
    producer: impl Fn() -> u64,
    publish: impl Fn(u64),
    mut parse: impl FnMut(u64, u64) -> Result<Step, Error>,
) -> Result<(), Error> {
    let mut done = 0u64;
    let mut published = 0u64;
    let mut stride = Stride::new(ring.min_record);
    let result = 'outer: loop {
        let end = producer().wrapping_sub(start);
        let lead = end.wrapping_sub(done);
        if lead > ring.size {
            let position = start.wrapping_add(done);
            break Err(Error::Corrupt {
                transport: ring.transport,
                position,
                length: lead,
                reason: ring.too_far_ahead,
            });
        }
        if lead == 0 || done >= ring.size {
            break Ok(());
        }
        while done < end {
            // Within the batch, publish every `publish_every` bytes (checked per stretch, not
            // per record).
            let stretch_end = end.min(published + ring.publish_every);
            while done < stretch_end {
                match parse(start.wrapping_add(done), end - done) {
                    Ok(Step::Took(length)) => done = stride.next(done, length),
                    Ok(Step::Stop) => break 'outer Ok(()),
                    Err(e) => break 'outer Err(e),
                }
            }
            if done - published >= ring.publish_every {
                publish(start.wrapping_add(done));
                published = done;
            }
        }
    };
    if done != published {
        publish(start.wrapping_add(done));
    }
    result
}
