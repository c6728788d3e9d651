//! Input validation for the AWS AppSync scalar types.
//!
//! AppSync extends GraphQL with nine scalars (`AWSDate`, `AWSEmail`, ...) and
//! rejects requests whose literals or variables do not match the scalar's
//! format. This module reproduces those checks so the GraphQL front can
//! accept and reject the same inputs. [`is_valid`] dispatches on the scalar
//! name; each scalar also has its own validator function.
//!
//! The parsers are small hand-written byte scanners (no regexes) and never
//! panic, whatever the input.

use std::net::{Ipv4Addr, Ipv6Addr};

use chrono::NaiveDate;

/// The AppSync scalar names, in this order.
pub const AWS_SCALARS: [&str; 9] = [
    "AWSDate",
    "AWSTime",
    "AWSDateTime",
    "AWSTimestamp",
    "AWSEmail",
    "AWSJSON",
    "AWSURL",
    "AWSPhone",
    "AWSIPAddress",
];

/// What a scalar's value looks like on the wire after GraphQL parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire<'a> {
    /// A GraphQL string.
    Str(&'a str),
    /// A GraphQL integer.
    Int(i64),
    /// Anything else (float, boolean, list, object, enum, null).
    Other,
}

/// True when `value` is a valid literal of the AppSync scalar `name`.
/// Unknown names return false.
///
/// `AWSTimestamp` takes an integer; every other AppSync scalar takes a string.
pub fn is_valid(name: &str, value: Wire<'_>) -> bool {
    let check: fn(&str) -> bool = match name {
        "AWSDate" => aws_date,
        "AWSTime" => aws_time,
        "AWSDateTime" => aws_date_time,
        "AWSTimestamp" => return aws_timestamp(value),
        "AWSEmail" => aws_email,
        "AWSJSON" => aws_json,
        "AWSURL" => aws_url,
        "AWSPhone" => aws_phone,
        "AWSIPAddress" => aws_ip_address,
        _ => return false,
    };
    match value {
        Wire::Str(s) => check(s),
        Wire::Int(_) | Wire::Other => false,
    }
}

/// `AWSDate`: `YYYY-MM-DD` with an optional time zone offset (`Z`, `±hh:mm`
/// or `±hh:mm:ss`). The year may be negative (`-0001-01-01`); the date must
/// exist in the proleptic Gregorian calendar.
pub fn aws_date(s: &str) -> bool {
    parse_all(s, |c| {
        date(c)?;
        optional_offset(c)
    })
}

/// `AWSTime`: `hh:mm`, `hh:mm:ss` or `hh:mm:ss.sss` (1–9 fraction digits),
/// with an optional time zone offset (`Z`, `±hh:mm` or `±hh:mm:ss`).
pub fn aws_time(s: &str) -> bool {
    parse_all(s, |c| {
        time(c)?;
        optional_offset(c)
    })
}

/// `AWSDateTime`: `YYYY-MM-DDThh:mm[:ss[.sss]]` followed by a mandatory time
/// zone offset (`Z`, `±hh:mm` or `±hh:mm:ss`).
pub fn aws_date_time(s: &str) -> bool {
    parse_all(s, |c| {
        date(c)?;
        c.expect(b'T')?;
        time(c)?;
        offset(c)
    })
}

/// `AWSTimestamp`: an integer number of seconds since the Unix epoch
/// (negative values allowed). Strings are not accepted.
pub fn aws_timestamp(value: Wire<'_>) -> bool {
    matches!(value, Wire::Int(_))
}

/// `AWSEmail`: `local@domain`.
///
/// The local part is either a dot-atom (letters, digits and
/// ``!#$%&'*+/=?^_`{|}~.-``, with no leading, trailing or doubled dot) or a
/// quoted string such as `"john doe"`, at most 64 bytes. The domain is one or
/// more dot-separated labels of letters, digits and hyphens (1–63 bytes, not
/// starting or ending with a hyphen); a single label such as `localhost` is
/// accepted. The whole address is at most 254 bytes.
pub fn aws_email(s: &str) -> bool {
    const MAX_ADDRESS: usize = 254;
    const MAX_LOCAL: usize = 64;

    if s.len() > MAX_ADDRESS {
        return false;
    }
    // The domain cannot contain `@`, so the last one is the separator; any
    // other `@` must sit inside a quoted local part.
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    local.len() <= MAX_LOCAL && (is_dot_atom(local) || is_quoted_string(local)) && is_domain(domain)
}

/// `AWSJSON`: any JSON text (object, array, string, number, boolean or null).
///
/// Parsed with `serde_json`, so nesting deeper than its recursion limit (128)
/// and numbers outside the `f64` range (such as `1e400`) are rejected.
pub fn aws_json(s: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(s).is_ok()
}

/// `AWSURL`: `scheme:rest`, where the scheme is a letter followed by letters,
/// digits, `+`, `-` or `.`, and `rest` is non-empty. Whitespace and control
/// characters are rejected anywhere, and the path (after the authority of a
/// `scheme://authority/path` URL) must not contain `//`.
pub fn aws_url(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    if !is_scheme(scheme)
        || rest.is_empty()
        || s.chars().any(|ch| ch.is_whitespace() || ch.is_control())
    {
        return false;
    }

    // Query and fragment may contain anything (including `//`).
    let hier_part = rest.split(['?', '#']).next().unwrap_or_default();
    let path = match hier_part.strip_prefix("//") {
        Some(after) => {
            let (authority, path) = after.split_at(after.find('/').unwrap_or(after.len()));
            if authority.is_empty() && path.is_empty() {
                return false;
            }
            path
        }
        None => hier_part,
    };
    !path.contains("//")
}

/// `AWSPhone`: a phone number of 7 to 15 digits with an optional leading `+`.
///
/// Spaces, hyphens and dots may separate digits, and digit groups may be
/// wrapped in (non-nested) parentheses, as in `+1 (555) 123-4567`. Letters
/// and any other characters are rejected. The number must start with a digit
/// or `(` (after the optional `+`) and end with a digit or `)`.
pub fn aws_phone(s: &str) -> bool {
    const DIGITS: std::ops::RangeInclusive<usize> = 7..=15;

    let body = s.strip_prefix('+').unwrap_or(s);
    let starts_ok = matches!(body.bytes().next(), Some(b'0'..=b'9' | b'('));
    let ends_ok = matches!(body.bytes().last(), Some(b'0'..=b'9' | b')'));
    if !starts_ok || !ends_ok {
        return false;
    }

    let mut digits = 0usize;
    // `Some(n)` while inside parentheses, counting the digits seen there.
    let mut group: Option<usize> = None;
    for b in body.bytes() {
        match (b, group) {
            (b'0'..=b'9', _) => {
                digits += 1;
                group = group.map(|n| n + 1);
            }
            (b' ' | b'-' | b'.', _) => {}
            (b'(', None) => group = Some(0),
            (b')', Some(n)) if n > 0 => group = None,
            _ => return false,
        }
    }
    group.is_none() && DIGITS.contains(&digits)
}

/// `AWSIPAddress`: an IPv4 dotted quad or an IPv6 address (not bracketed, no
/// zone id), optionally followed by a CIDR prefix length `/n` (0–32 for IPv4,
/// 0–128 for IPv6, decimal without leading zeros).
pub fn aws_ip_address(s: &str) -> bool {
    let (addr, prefix) = match s.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (s, None),
    };
    let max_prefix = if addr.parse::<Ipv4Addr>().is_ok() {
        32
    } else if addr.parse::<Ipv6Addr>().is_ok() {
        128
    } else {
        return false;
    };
    prefix.is_none_or(|p| prefix_len(p).is_some_and(|n| n <= max_prefix))
}

// ---------------------------------------------------------------------------
// Date and time parsing
// ---------------------------------------------------------------------------

/// Largest time zone offset accepted, in seconds (±18:00, as in ISO 8601
/// implementations such as `java.time`).
const MAX_OFFSET_SECONDS: u32 = 18 * 3600;

/// A forward-only cursor over the bytes of an ASCII format.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(s: &'a str) -> Self {
        Self { rest: s.as_bytes() }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// Consumes `b` if it is next; reports whether it did.
    fn eat(&mut self, b: u8) -> bool {
        match self.rest.split_first() {
            Some((&first, tail)) if first == b => {
                self.rest = tail;
                true
            }
            _ => false,
        }
    }

    /// Consumes `b`, failing if something else is next.
    fn expect(&mut self, b: u8) -> Option<()> {
        self.eat(b).then_some(())
    }

    /// Consumes exactly `n` ASCII digits (n ≤ 9) and returns their value.
    fn digits(&mut self, n: usize) -> Option<u32> {
        let (head, tail) = self.rest.split_at_checked(n)?;
        let value = head.iter().try_fold(0u32, |acc, &b| {
            b.is_ascii_digit().then(|| acc * 10 + u32::from(b - b'0'))
        })?;
        self.rest = tail;
        Some(value)
    }

    /// Consumes a run of ASCII digits and returns how many there were.
    fn digit_run(&mut self) -> usize {
        let n = self.rest.iter().take_while(|b| b.is_ascii_digit()).count();
        self.rest = &self.rest[n..];
        n
    }
}

/// Runs `parse` over `s` and requires it to succeed and consume everything.
fn parse_all(s: &str, parse: impl FnOnce(&mut Cursor<'_>) -> Option<()>) -> bool {
    let mut cursor = Cursor::new(s);
    parse(&mut cursor).is_some() && cursor.is_empty()
}

/// `[-]YYYY-MM-DD`, a real calendar date.
fn date(c: &mut Cursor<'_>) -> Option<()> {
    let negative = c.eat(b'-');
    let year = i32::try_from(c.digits(4)?).ok()?;
    c.expect(b'-')?;
    let month = c.digits(2)?;
    c.expect(b'-')?;
    let day = c.digits(2)?;
    let year = if negative { -year } else { year };
    NaiveDate::from_ymd_opt(year, month, day).map(drop)
}

/// `hh:mm`, `hh:mm:ss` or `hh:mm:ss.f` with 1–9 fraction digits.
fn time(c: &mut Cursor<'_>) -> Option<()> {
    let hour = c.digits(2)?;
    c.expect(b':')?;
    let minute = c.digits(2)?;
    if hour > 23 || minute > 59 {
        return None;
    }
    if c.eat(b':') {
        let second = c.digits(2)?;
        if second > 59 {
            return None;
        }
        if c.eat(b'.') && !(1..=9).contains(&c.digit_run()) {
            return None;
        }
    }
    Some(())
}

/// `Z`, `±hh:mm` or `±hh:mm:ss`, at most ±18:00.
fn offset(c: &mut Cursor<'_>) -> Option<()> {
    if c.eat(b'Z') {
        return Some(());
    }
    if !(c.eat(b'+') || c.eat(b'-')) {
        return None;
    }
    let hours = c.digits(2)?;
    c.expect(b':')?;
    let minutes = c.digits(2)?;
    let seconds = if c.eat(b':') { c.digits(2)? } else { 0 };
    let total = hours * 3600 + minutes * 60 + seconds;
    (minutes <= 59 && seconds <= 59 && total <= MAX_OFFSET_SECONDS).then_some(())
}

/// An offset if anything is left, nothing otherwise.
fn optional_offset(c: &mut Cursor<'_>) -> Option<()> {
    if c.is_empty() { Some(()) } else { offset(c) }
}

// ---------------------------------------------------------------------------
// Email, URL and IP helpers
// ---------------------------------------------------------------------------

/// RFC 5322 `atext`: the characters allowed in an unquoted local part.
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`{|}~-".contains(&b)
}

/// One or more runs of `atext` separated by single dots.
fn is_dot_atom(s: &str) -> bool {
    s.split('.')
        .all(|atom| !atom.is_empty() && atom.bytes().all(is_atext))
}

/// A non-empty quoted string: printable ASCII between double quotes, where
/// `"` and `\` must be escaped with a backslash.
fn is_quoted_string(s: &str) -> bool {
    let Some(inner) = s
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .filter(|inner| !inner.is_empty())
    else {
        return false;
    };
    let printable = |b: u8| (b' '..=b'~').contains(&b);
    let mut bytes = inner.bytes();
    while let Some(b) = bytes.next() {
        let ok = match b {
            b'\\' => bytes.next().is_some_and(printable),
            b'"' => false,
            _ => printable(b),
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Dot-separated host name labels: 1–63 letters, digits or hyphens, not
/// starting or ending with a hyphen.
fn is_domain(s: &str) -> bool {
    s.split('.').all(|label| {
        (1..=63).contains(&label.len())
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

/// RFC 3986 scheme: a letter followed by letters, digits, `+`, `-` or `.`.
fn is_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// A CIDR prefix length: 1–3 decimal digits without leading zeros.
fn prefix_len(s: &str) -> Option<u8> {
    let canonical = (1..=3).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    canonical.then(|| s.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks a string scalar both directly and through [`is_valid`].
    fn check(name: &str, f: fn(&str) -> bool, valid: &[&str], invalid: &[&str]) {
        for s in valid {
            assert!(f(s), "{name}: expected {s:?} to be valid");
            assert!(is_valid(name, Wire::Str(s)), "{name}: is_valid({s:?})");
        }
        for s in invalid {
            assert!(!f(s), "{name}: expected {s:?} to be invalid");
            assert!(!is_valid(name, Wire::Str(s)), "{name}: is_valid({s:?})");
        }
    }

    #[test]
    fn date() {
        check(
            "AWSDate",
            aws_date,
            &[
                "1970-01-01",
                "2024-02-29",
                "2000-02-29",
                "-0001-01-01",
                "0000-12-31",
                "9999-12-31",
                "1970-01-01Z",
                "1970-01-01-07:00",
                "1970-01-01+05:30",
                "1970-01-01+05:30:15",
                "1970-01-01+18:00",
            ],
            &[
                "",
                "2023-02-30",
                "2023-02-29",
                "1900-02-29",
                "2024-13-01",
                "2024-00-10",
                "2024-01-00",
                "2024-04-31",
                "24-01-01",
                "2024-1-01",
                "2024/01/01",
                "+2024-01-01",
                "20240101",
                "2024-01-01T00:00Z",
                "2024-01-01z",
                "2024-01-01+5:30",
                "2024-01-01+05",
                "2024-01-01+0530",
                "2024-01-01+18:01",
                "2024-01-01+05:60",
                "2024-01-01 ",
                " 2024-01-01",
                "２０２４-01-01",
            ],
        );
    }

    #[test]
    fn time() {
        check(
            "AWSTime",
            aws_time,
            &[
                "12:30",
                "00:00:00",
                "23:59:59",
                "12:30:45.1",
                "12:30:45.123",
                "12:30:45.123456789",
                "12:30Z",
                "12:30:45.123Z",
                "12:30:45-07:00",
                "12:30:45+05:30:15",
            ],
            &[
                "",
                "24:00",
                "24:00:00",
                "12:60",
                "12:30:60",
                "1:30",
                "12:3",
                "12",
                "12:30:",
                "12:30:45.",
                "12:30:45.1234567890",
                "12:30.5",
                "12:30:45,5",
                "12:30:45 Z",
                "12:30:45+0700",
                "12:30:45+19:00",
                "T12:30:45",
                "12h30",
            ],
        );
    }

    #[test]
    fn date_time() {
        check(
            "AWSDateTime",
            aws_date_time,
            &[
                "1970-01-01T12:30:45.123Z",
                "2024-01-02T03:04Z",
                "2024-01-02T03:04:05Z",
                "2024-01-02T03:04:05.123456789Z",
                "2024-01-02T03:04:05-07:00",
                "2024-01-02T03:04:05+05:30:15",
                "-0001-01-01T00:00:00Z",
                "2024-02-29T23:59:59+00:00",
            ],
            &[
                "",
                "2024-01-02T03:04:05",
                "2024-01-02T03:04",
                "2024-01-02 03:04:05Z",
                "2024-01-02t03:04:05Z",
                "2024-01-02T03:04:05z",
                "2023-02-29T03:04:05Z",
                "2024-01-02T24:00:00Z",
                "2024-01-02T03:60:00Z",
                "2024-01-02T03:04:05.Z",
                "2024-01-02T03:04:05.1234567890Z",
                "2024-01-02Z",
                "2024-01-02T03:04:05+0700",
                "2024-01-02T03:04:05ZZ",
                "2024-01-02T03:04:05Z ",
            ],
        );
    }

    #[test]
    fn timestamp() {
        for n in [0, 1, -1, 1_700_000_000, i64::MIN, i64::MAX] {
            assert!(aws_timestamp(Wire::Int(n)), "{n}");
            assert!(is_valid("AWSTimestamp", Wire::Int(n)), "{n}");
        }
        let invalid = [
            Wire::Str("1700000000"),
            Wire::Str("0"),
            Wire::Str(""),
            Wire::Str("-1"),
            Wire::Str("1970-01-01T00:00:00Z"),
            Wire::Other,
        ];
        for value in invalid {
            assert!(!aws_timestamp(value), "{value:?}");
            assert!(!is_valid("AWSTimestamp", value), "{value:?}");
        }
    }

    #[test]
    fn email() {
        let max_local = "a".repeat(64);
        let long_local = "a".repeat(65);
        let at_max = format!(
            "{max_local}@{}.{}.{}.com",
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(57)
        );
        let too_long = format!(
            "{max_local}@{}.{}.{}.com",
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(58)
        );
        assert_eq!(at_max.len(), 254);
        check(
            "AWSEmail",
            aws_email,
            &[
                "user@example.com",
                "first.last@example.co.uk",
                "user+tag@example.com",
                "!#$%&'*+/=?^_`{|}~-@example.com",
                "user@localhost",
                "u@a-b.example",
                "1234@123.123",
                "\"john doe\"@example.com",
                "\"a@b\"@example.com",
                "\"quote\\\"inside\"@example.com",
                &format!("{max_local}@example.com"),
                &at_max,
            ],
            &[
                "",
                "@",
                "user",
                "user@",
                "@example.com",
                "user@@example.com",
                "a@b@example.com",
                ".user@example.com",
                "user.@example.com",
                "us..er@example.com",
                "us er@example.com",
                "user@exa mple.com",
                "user@-example.com",
                "user@example-.com",
                "user@example..com",
                "user@example.com.",
                "user@.example.com",
                "user@exam_ple.com",
                "user@[127.0.0.1]",
                "üser@example.com",
                "user@exämple.com",
                "\"\"@example.com",
                "\"unterminated@example.com",
                "\"a\"b\"@example.com",
                "\"trailing\\\"@example.com",
                &format!("{long_local}@example.com"),
                &format!("user@{}.com", "a".repeat(64)),
                &too_long,
            ],
        );
    }

    #[test]
    fn json() {
        check(
            "AWSJSON",
            aws_json,
            &[
                "{}",
                "[]",
                "{\"a\":1,\"b\":[true,null,\"x\"]}",
                "\"just a string\"",
                "42",
                "-1.5e10",
                "true",
                "null",
                " { \"spaced\" : [ 1 , 2 ] } ",
                "\"unicode ✓ \\u00e9\"",
            ],
            &[
                "",
                " ",
                "{",
                "{a:1}",
                "{'a':1}",
                "[1,]",
                "{\"a\":1,}",
                "undefined",
                "NaN",
                "01",
                "{} {}",
                "True",
                "just text",
            ],
        );
    }

    #[test]
    fn url() {
        check(
            "AWSURL",
            aws_url,
            &[
                "http://example.com",
                "https://example.com/",
                "http://example.com/a/b?x=1",
                "https://user:pw@example.com:8443/path#frag",
                "mailto:a@b.com",
                "ftp://ftp.example.com/pub/file.txt",
                "file:///etc/hosts",
                "urn:isbn:0451450523",
                "svn+ssh://host/repo",
                "http://example.com/a?next=http://other.com//x",
                "http://example.com/a#//frag",
                "http://例え.jp/パス",
            ],
            &[
                "",
                "example.com",
                "/relative/path",
                "//example.com/a",
                "http:",
                "http://",
                "http://example.com//a",
                "http://example.com/a//b",
                "mailto:a//b",
                "1http://example.com",
                "ht tp://example.com",
                "http://exa mple.com",
                "http://example.com/a b",
                "http://example.com/\n",
                " http://example.com",
                ":no-scheme",
                "h_p://example.com",
            ],
        );
    }

    #[test]
    fn phone() {
        check(
            "AWSPhone",
            aws_phone,
            &[
                "555-1234",
                "5551234",
                "555 123 4567",
                "(555) 123-4567",
                "+1 (555) 123-4567",
                "+15551234567",
                "+44 20 7946 0958",
                "555.123.4567",
                "+123456789012345",
                "+1-(555)-123-4567",
            ],
            &[
                "",
                "+",
                "123456",
                "+1234567890123456",
                "555-CALL-NOW",
                "555-1234 x12",
                "++15551234567",
                "1+5551234567",
                "+ 15551234567",
                " 5551234567",
                "5551234567 ",
                "-5551234567",
                "(555 123-4567",
                "555) 123-4567",
                "((555)) 123-4567",
                "() 5551234567",
                "555/123/4567",
                "５５５１２３４５６７",
            ],
        );
    }

    #[test]
    fn ip_address() {
        check(
            "AWSIPAddress",
            aws_ip_address,
            &[
                "127.0.0.1",
                "0.0.0.0",
                "255.255.255.255",
                "192.168.0.0/16",
                "10.0.0.0/0",
                "10.0.0.1/32",
                "::1",
                "::",
                "2001:db8::ff00:42:8329",
                "2001:db8::/32",
                "::ffff:192.168.0.1",
                "fe80::/128",
            ],
            &[
                "",
                "256.0.0.1",
                "1.2.3",
                "1.2.3.4.5",
                "01.2.3.4",
                "1.2.3.4/33",
                "1.2.3.4/",
                "1.2.3.4/-1",
                "1.2.3.4/+8",
                "1.2.3.4/08",
                "1.2.3.4/1/2",
                "::1/129",
                "[::1]",
                "fe80::1%eth0",
                "2001:db8:::1",
                "localhost",
                " 127.0.0.1",
            ],
        );
    }

    #[test]
    fn dispatch() {
        let samples = [
            ("AWSDate", Wire::Str("2024-01-01")),
            ("AWSTime", Wire::Str("12:00")),
            ("AWSDateTime", Wire::Str("2024-01-01T12:00Z")),
            ("AWSTimestamp", Wire::Int(0)),
            ("AWSEmail", Wire::Str("a@b.c")),
            ("AWSJSON", Wire::Str("{}")),
            ("AWSURL", Wire::Str("http://a")),
            ("AWSPhone", Wire::Str("5551234")),
            ("AWSIPAddress", Wire::Str("::1")),
        ];
        let names: Vec<_> = samples.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, AWS_SCALARS);
        for (name, value) in samples {
            assert!(is_valid(name, value), "{name}: {value:?}");
            assert!(!is_valid(name, Wire::Other), "{name}: Other");
        }
        for name in AWS_SCALARS.iter().filter(|name| **name != "AWSTimestamp") {
            assert!(!is_valid(name, Wire::Int(1)), "{name}: Int");
        }
        assert!(!is_valid("String", Wire::Str("x")));
        assert!(!is_valid("awsdate", Wire::Str("2024-01-01")));
        assert!(!is_valid("", Wire::Int(0)));
    }

    #[test]
    fn weird_inputs_do_not_panic() {
        let long_digits = "1".repeat(100_000);
        let long_text = "a".repeat(100_000);
        let deep_json = "[".repeat(100_000) + &"]".repeat(100_000);
        let weird = [
            "",
            " ",
            "\0",
            "é",
            "日本語",
            "🦀🦀🦀",
            "\u{feff}2024-01-01",
            "2024-01-01\u{0301}",
            "-",
            "+",
            ":",
            "@",
            "/",
            "//",
            "\"",
            "\\",
            "()",
            long_digits.as_str(),
            long_text.as_str(),
            deep_json.as_str(),
        ];
        for name in AWS_SCALARS {
            for s in weird {
                // Only the absence of panics matters for most of these.
                let _ = is_valid(name, Wire::Str(s));
            }
        }
        for s in &weird[..17] {
            for name in AWS_SCALARS {
                assert!(!is_valid(name, Wire::Str(s)), "{name}: {s:?}");
            }
        }
        assert!(!aws_json(&deep_json));
        assert!(!aws_email(&format!("{long_text}@example.com")));
        assert!(!aws_phone(&long_digits));
        assert!(!aws_date(&long_digits));
    }
}
