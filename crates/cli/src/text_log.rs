//! Cheaper writers of the text log's fields and timestamps, byte for byte what
//! tracing-subscriber's [`DefaultFields`] and `SystemTime` write.
//!
//! At `info` the gateway writes one line a request with sixteen fields. The default
//! visitor sends every value, numbers and plain strings included, through `{:?}` and
//! `write!`, which was about 11,700 instructions of a proxied request's 131,000
//! (docs/performance.md). [`FastFields`] writes the common cases directly: a string
//! that needs no escaping between quotes, integers with `itoa`, floats with `ryu` where
//! its digits are the standard library's. Everything else (the message, errors, `Debug`
//! values, strings that need escaping, floats outside `ryu`'s matching range) goes to
//! [`DefaultVisitor`] itself, so the output cannot drift from the default's.
//! [`Timestamp`] writes the same RFC 3339 time as tracing-subscriber's `SystemTime`
//! (about 2,300 instructions a line, mostly `write!` of seven padded numbers) from a
//! per-thread copy of the current second's text.
//!
//! [`DefaultFields`]: tracing_subscriber::fmt::format::DefaultFields

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};
use tracing_subscriber::fmt::time::FormatTime;

/// The text layer's field formatter: [`DefaultFields`]' output, written with fewer
/// instructions.
///
/// [`DefaultFields`]: tracing_subscriber::fmt::format::DefaultFields
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FastFields;

impl<'a> MakeVisitor<Writer<'a>> for FastFields {
    type Visitor = FastVisitor<'a>;

    fn make_visitor(&self, target: Writer<'a>) -> FastVisitor<'a> {
        FastVisitor {
            writer: target,
            is_empty: true,
            result: Ok(()),
        }
    }
}

/// The visitor [`FastFields`] makes for each event or span record.
pub(crate) struct FastVisitor<'a> {
    writer: Writer<'a>,
    /// Nothing written yet: the next field needs no separating space.
    is_empty: bool,
    result: fmt::Result,
}

impl FastVisitor<'_> {
    /// Writes ` name=` (no space before the first field), unless a write failed; false
    /// when the value should not be written.
    fn key(&mut self, field: &Field) -> bool {
        if self.result.is_err() {
            return false;
        }
        let name = field.name();
        let name = name.strip_prefix("r#").unwrap_or(name);
        let pad = if self.is_empty { "" } else { " " };
        self.is_empty = false;
        self.result = self
            .writer
            .write_str(pad)
            .and_then(|()| self.writer.write_str(name))
            .and_then(|()| self.writer.write_char('='));
        self.result.is_ok()
    }

    /// Hands one field to tracing-subscriber's own visitor, with the same spacing.
    fn default_visitor(&mut self, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if self.result.is_err() {
            return;
        }
        let mut visitor = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut visitor);
        self.result = visitor.finish();
        self.is_empty = false;
    }

    /// Whether `field` is one the default visitor treats specially.
    fn is_special(field: &Field) -> bool {
        let name = field.name();
        name == "message" || name.starts_with("log.")
    }
}

/// Whether `{:?}` of `value` is `value` between double quotes: printable ASCII with no
/// quote or backslash, the characters `str`'s `Debug` writes as they are.
fn is_plain(value: &str) -> bool {
    value
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

/// `value` as `{:?}` writes it, from `ryu`'s digits, or `None` where they may differ.
///
/// Both write the shortest digits that read back to the same float. Up to 15
/// significant digits that shortest form is unique; at 16 or 17 there can be two, and
/// the two libraries may pick differently, so those go to `{:?}`. The layouts agree
/// except from 1e-5 to 1e-4, which `{:?}` writes with an exponent (`2.7e-5`) and `ryu`
/// without (`0.000027`): that range is rewritten here. Non-finite values go to `{:?}`.
fn debug_f64(value: f64, buffer: &mut ryu::Buffer) -> Option<F64Text<'_>> {
    if !value.is_finite() {
        return None;
    }
    let text = buffer.format_finite(value);
    let mantissa = text.split(['e', 'E']).next().unwrap_or(text);
    let digits = mantissa.trim_start_matches(['-', '0', '.']);
    let significant = digits
        .trim_end_matches(['0', '.'])
        .bytes()
        .filter(u8::is_ascii_digit)
        .count();
    if significant > 15 {
        return None;
    }
    if (1e-5..1e-4).contains(&value.abs()) {
        // `0.0000ddd` (or `-0.0000ddd`): the digits after the four zeros, as d.dd e-5.
        let negative = value < 0.0;
        let (lead, rest) = digits.split_at(1);
        return Some(F64Text::Exponent5 {
            negative,
            lead,
            rest,
        });
    }
    Some(F64Text::Plain(text))
}

/// A float written as `{:?}` writes it; from [`debug_f64`].
enum F64Text<'a> {
    /// Exactly these characters.
    Plain(&'a str),
    /// `lead.rest e-5`, with `-` first when negative and no `.` when `rest` is empty.
    Exponent5 {
        negative: bool,
        lead: &'a str,
        rest: &'a str,
    },
}

impl F64Text<'_> {
    fn write(&self, writer: &mut Writer<'_>) -> fmt::Result {
        match *self {
            F64Text::Plain(text) => writer.write_str(text),
            F64Text::Exponent5 {
                negative,
                lead,
                rest,
            } => {
                if negative {
                    writer.write_str("-")?;
                }
                writer.write_str(lead)?;
                if !rest.is_empty() {
                    writer.write_str(".")?;
                    writer.write_str(rest)?;
                }
                writer.write_str("e-5")
            }
        }
    }
}

impl Visit for FastVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if Self::is_special(field) || !is_plain(value) {
            self.default_visitor(|v| v.record_str(field, value));
        } else if self.key(field) {
            self.result = self
                .writer
                .write_char('"')
                .and_then(|()| self.writer.write_str(value))
                .and_then(|()| self.writer.write_char('"'));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if Self::is_special(field) {
            self.default_visitor(|v| v.record_u64(field, value));
        } else if self.key(field) {
            self.result = self.writer.write_str(itoa::Buffer::new().format(value));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if Self::is_special(field) {
            self.default_visitor(|v| v.record_i64(field, value));
        } else if self.key(field) {
            self.result = self.writer.write_str(itoa::Buffer::new().format(value));
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if Self::is_special(field) {
            self.default_visitor(|v| v.record_bool(field, value));
        } else if self.key(field) {
            self.result = self.writer.write_str(if value { "true" } else { "false" });
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        let mut buffer = ryu::Buffer::new();
        match debug_f64(value, &mut buffer) {
            Some(text) if !Self::is_special(field) => {
                if self.key(field) {
                    self.result = text.write(&mut self.writer);
                }
            }
            _ => self.default_visitor(|v| v.record_f64(field, value)),
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.default_visitor(|v| v.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.default_visitor(|v| v.record_debug(field, value));
    }
}

impl VisitOutput<fmt::Result> for FastVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for FastVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

/// The text layer's timer: UTC with microseconds, `2026-11-23T18:41:47.202233Z`, as
/// tracing-subscriber's `SystemTime` writes it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Timestamp;

/// `YYYY-MM-DDTHH:MM:SS`: the part of a timestamp that changes once a second.
type SecondText = [u8; 19];

thread_local! {
    /// The last second this thread wrote, and its text.
    static LAST_SECOND: std::cell::Cell<(u64, SecondText)> =
        const { std::cell::Cell::new((u64::MAX, [0; 19])) };
}

impl FormatTime for Timestamp {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let now = std::time::SystemTime::now();
        match now.duration_since(std::time::UNIX_EPOCH) {
            Ok(since) if since.as_secs() < MAX_SECS => {
                let secs = since.as_secs();
                let second = LAST_SECOND.with(|last| {
                    let (cached, text) = last.get();
                    if cached == secs {
                        text
                    } else {
                        let text = second_text(secs);
                        last.set((secs, text));
                        text
                    }
                });
                let text = timestamp_text(&second, since.subsec_micros());
                // Only ASCII digits and punctuation were written.
                w.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
            }
            // Before 1970 or after 9999: the library's own, which writes those too.
            _ => tracing_subscriber::fmt::time::SystemTime.format_time(w),
        }
    }
}

/// 10000-01-01T00:00:00Z: from here the year takes five digits.
const MAX_SECS: u64 = 253_402_300_800;

/// `second` followed by `.uuuuuuZ`.
fn timestamp_text(second: &SecondText, micros: u32) -> [u8; 27] {
    let mut text = [0u8; 27];
    text[..19].copy_from_slice(second);
    text[19] = b'.';
    put_digits(&mut text[20..26], micros);
    text[26] = b'Z';
    text
}

/// The text of the second `secs` after the epoch (below [`MAX_SECS`]).
fn second_text(secs: u64) -> SecondText {
    let days = secs / 86_400;
    let in_day = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let mut text = *b"0000-00-00T00:00:00";
    put_digits(&mut text[0..4], year);
    put_digits(&mut text[5..7], month);
    put_digits(&mut text[8..10], day);
    put_digits(&mut text[11..13], (in_day / 3600) as u32);
    put_digits(&mut text[14..16], (in_day / 60 % 60) as u32);
    put_digits(&mut text[17..19], (in_day % 60) as u32);
    text
}

/// Writes `value`'s last `out.len()` decimal digits into `out`, zero-padded.
fn put_digits(out: &mut [u8], mut value: u32) {
    for digit in out.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u32, u32, u32) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year as u32, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use proptest::prelude::*;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// A writer the test reads back.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    impl Buffer {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// What `emit` logs, formatted by the default fields and by [`FastFields`], with
    /// spans shown (as the text layer shows them at debug).
    fn both(emit: impl Fn()) -> (String, String) {
        let default = Buffer::default();
        let fast = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(default.clone())
            .without_time()
            .with_max_level(tracing::Level::TRACE)
            .finish();
        tracing::subscriber::with_default(subscriber, &emit);
        let subscriber = tracing_subscriber::fmt()
            .with_writer(fast.clone())
            .without_time()
            .with_max_level(tracing::Level::TRACE)
            .fmt_fields(FastFields)
            .finish();
        tracing::subscriber::with_default(subscriber, &emit);
        (default.text(), fast.text())
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] io::Error);

    #[test]
    fn every_kind_of_field_is_written_as_the_default_writes_it() {
        let (default, fast) = both(|| {
            let span = tracing::info_span!("request", request_id = "req-1", n = 3_u64);
            let _entered = span.enter();
            span.record("n", 4_u64);
            tracing::info!(
                request_id = "req-660f13d82dff6-0",
                decision = "route",
                quoted = "say \"hi\"\n",
                unicode = "modèle",
                empty = "",
                status = 200_u16,
                negative = -7_i64,
                big = u64::MAX,
                yes = true,
                cost_usd = 0.0,
                decide_ms = 0.041,
                upstream_ms = 1830.512,
                tiny = 1e-5,
                small_cost = 2.7e-5,
                negative_cost = -2.07e-5,
                band_edge = 9.99e-5,
                // Cases proptest found: `ryu` and `{:?}` pick different 17-digit forms
                // of this one, and this one is in the band `{:?}` writes with an exponent.
                seventeen_digits = -1005966319377388.3,
                in_the_band = -7.677288472468795e-5,
                small = 1e-4,
                large = 1e16,
                huge = 1.5e300,
                nan = f64::NAN,
                inf = f64::NEG_INFINITY,
                debug = ?Some(3),
                display = %"shown",
                error = &Outer(io::Error::other("inner")) as &(dyn std::error::Error + 'static),
                r#type = "raw",
                "request {}",
                "formatted"
            );
            tracing::warn!(only = 1_u64);
            tracing::warn!("message only");
        });
        assert_eq!(fast, default);
        assert!(
            default.contains("decide_ms=0.041 upstream_ms=1830.512"),
            "{default}"
        );
    }

    fn at(secs: u64, micros: u32) -> String {
        String::from_utf8(timestamp_text(&second_text(secs), micros).to_vec()).unwrap()
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        // Values from `date -u -d @SECS +%Y-%m-%dT%H:%M:%S`.
        for (secs, text) in [
            (0, "1970-01-01T00:00:00"),
            (68_255_999, "1972-02-29T23:59:59"),
            (951_782_400, "2000-02-29T00:00:00"),
            (1_795_455_707, "2026-11-23T17:41:47"),
            (1_798_761_599, "2026-12-31T23:59:59"),
            (4_107_542_400, "2100-03-01T00:00:00"),
            (MAX_SECS - 1, "9999-12-31T23:59:59"),
        ] {
            assert_eq!(at(secs, 7), format!("{text}.000007Z"));
        }
        assert_eq!(at(0, 999_999), "1970-01-01T00:00:00.999999Z");
    }

    /// The days from 1970-01-01 to a date, counted independently of
    /// [`civil_from_days`]: whole years, then whole months.
    fn days_to(year: u32, month: u32, day: u32) -> u64 {
        let leap =
            |y: u32| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
        let years: u64 = (1970..year).map(|y| if leap(y) { 366 } else { 365 }).sum();
        let lengths = [
            31,
            if leap(year) { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ];
        let months: u64 = lengths[..month as usize - 1].iter().sum();
        years + months + u64::from(day) - 1
    }

    #[test]
    fn the_default_timer_writes_the_same_layout() {
        let mut ours = String::new();
        Timestamp.format_time(&mut Writer::new(&mut ours)).unwrap();
        let mut theirs = String::new();
        tracing_subscriber::fmt::time::SystemTime
            .format_time(&mut Writer::new(&mut theirs))
            .unwrap();
        assert_eq!(ours.len(), theirs.len(), "{ours} {theirs}");
        // Same second (unless the two calls straddle one): same first 19 characters.
        let same = ours[..19] == theirs[..19] || ours[..17] == theirs[..17];
        assert!(same, "{ours} {theirs}");
        let layout = |t: &str| {
            t.bytes()
                .map(|b| if b.is_ascii_digit() { b'9' } else { b })
                .collect::<Vec<_>>()
        };
        assert_eq!(layout(&ours), layout(&theirs));
    }

    proptest! {
        #[test]
        fn a_date_reads_back_to_its_day(secs in 0..MAX_SECS, micros in 0_u32..1_000_000) {
            let text = at(secs, micros);
            let field = |range: std::ops::Range<usize>| text[range].parse::<u32>().unwrap();
            let (year, month, day) = (field(0..4), field(5..7), field(8..10));
            prop_assert!((1..=12).contains(&month) && (1..=31).contains(&day), "{}", text);
            let seconds = days_to(year, month, day) * 86_400
                + u64::from(field(11..13)) * 3600
                + u64::from(field(14..16)) * 60
                + u64::from(field(17..19));
            prop_assert_eq!(seconds, secs, "{}", text);
            prop_assert_eq!(field(20..26), micros);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn strings_and_numbers_match_the_default(
            text in ".{0,12}",
            word in "[ -~]{0,12}",
            float in any::<f64>(),
            scaled in -1e18_f64..1e18,
            tiny in -1e-3_f64..1e-3,
            band in -1e-4_f64..-1e-5,
            wee in -1e-5_f64..1e-5,
            vast in 1e15_f64..1e25,
            micros in 0_u64..10_000_000_000,
            integer in any::<i64>(),
        ) {
            let (default, fast) = both(|| {
                let millis = (micros as f64) / 1e3;
                tracing::info!(text, word, float, scaled, tiny, band, wee, vast, millis, integer, "event");
            });
            prop_assert_eq!(fast, default);
        }
    }
}
