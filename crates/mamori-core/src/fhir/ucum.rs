//! UCUM units (the Unified Code for Units of Measure), enough of them to
//! compare clinical quantities across units: `5.4 mmol/L` with `5400
//! umol/L`, `1 g/dL` with `10 g/L`, `120 mm[Hg]` with `16 kPa`. A unit is
//! parsed into a factor and a dimension over base units (m, g, s, mol,
//! eq, international units); units that are not understood are left as
//! they are (compared by their code only), never converted by guess.
//!
//! Not handled: temperatures (Cel and [degF] are not proportional),
//! units that convert only with a substance's molar mass, and the rarer
//! customary units.

/// The dimensions, in order: length, mass, time, amount, equivalents,
/// international units.
const DIMS: [&str; 6] = ["m", "g", "s", "mol", "eq", "[iU]"];

type Dim = [i8; 6];

/// A unit: a factor to the base units and their exponents.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Unit {
    factor: f64,
    dim: Dim,
}

impl Unit {
    const ONE: Unit = Unit { factor: 1.0, dim: [0; 6] };
    fn mul(self, o: Unit) -> Unit {
        let mut dim = self.dim;
        for (d, x) in dim.iter_mut().zip(o.dim) {
            *d += x;
        }
        Unit { factor: self.factor * o.factor, dim }
    }
    fn pow(self, e: i32) -> Unit {
        Unit { factor: self.factor.powi(e), dim: self.dim.map(|d| d * e as i8) }
    }
}

const fn u(factor: f64, dim: Dim) -> Unit {
    Unit { factor, dim }
}

/// Atoms: code, prefixable (metric), the unit.
const ATOMS: &[(&str, bool, Unit)] = &[
    ("m", true, u(1.0, [1, 0, 0, 0, 0, 0])),
    ("g", true, u(1.0, [0, 1, 0, 0, 0, 0])),
    ("s", true, u(1.0, [0, 0, 1, 0, 0, 0])),
    ("L", true, u(1e-3, [3, 0, 0, 0, 0, 0])),
    ("l", true, u(1e-3, [3, 0, 0, 0, 0, 0])),
    ("mol", true, u(1.0, [0, 0, 0, 1, 0, 0])),
    ("eq", true, u(1.0, [0, 0, 0, 0, 1, 0])),
    ("[iU]", true, u(1.0, [0, 0, 0, 0, 0, 1])),
    ("[IU]", true, u(1.0, [0, 0, 0, 0, 0, 1])),
    ("U", true, u(1e-6 / 60.0, [0, 0, -1, 1, 0, 0])),
    ("kat", true, u(1.0, [0, 0, -1, 1, 0, 0])),
    ("Pa", true, u(1000.0, [-1, 1, -2, 0, 0, 0])),
    ("bar", true, u(1e8, [-1, 1, -2, 0, 0, 0])),
    ("m[Hg]", true, u(133_322_000.0, [-1, 1, -2, 0, 0, 0])),
    ("m[H2O]", true, u(9_806_650.0, [-1, 1, -2, 0, 0, 0])),
    ("min", false, u(60.0, [0, 0, 1, 0, 0, 0])),
    ("h", false, u(3600.0, [0, 0, 1, 0, 0, 0])),
    ("d", false, u(86_400.0, [0, 0, 1, 0, 0, 0])),
    ("wk", false, u(604_800.0, [0, 0, 1, 0, 0, 0])),
    ("mo", false, u(2_629_800.0, [0, 0, 1, 0, 0, 0])),
    ("a", false, u(31_557_600.0, [0, 0, 1, 0, 0, 0])),
    ("%", false, u(0.01, [0; 6])),
    ("[lb_av]", false, u(453.592_37, [0, 1, 0, 0, 0, 0])),
    ("[oz_av]", false, u(28.349_523_125, [0, 1, 0, 0, 0, 0])),
    ("[in_i]", false, u(0.0254, [1, 0, 0, 0, 0, 0])),
    ("[ft_i]", false, u(0.3048, [1, 0, 0, 0, 0, 0])),
];

const PREFIXES: &[(&str, f64)] = &[
    ("da", 1e1),
    ("Y", 1e24),
    ("Z", 1e21),
    ("E", 1e18),
    ("P", 1e15),
    ("T", 1e12),
    ("G", 1e9),
    ("M", 1e6),
    ("k", 1e3),
    ("h", 1e2),
    ("d", 1e-1),
    ("c", 1e-2),
    ("m", 1e-3),
    ("u", 1e-6),
    ("n", 1e-9),
    ("p", 1e-12),
    ("f", 1e-15),
    ("a", 1e-18),
];

fn atom(s: &str) -> Option<Unit> {
    if let Some((_, _, unit)) = ATOMS.iter().find(|(c, _, _)| *c == s) {
        return Some(*unit);
    }
    PREFIXES.iter().find_map(|(p, f)| {
        let rest = s.strip_prefix(p)?;
        let (_, metric, unit) = ATOMS.iter().find(|(c, _, _)| *c == rest)?;
        metric.then(|| Unit { factor: unit.factor * f, dim: unit.dim })
    })
}

/// One component without its exponent: an atom, a number (`10*3`,
/// `10^3`, `1000`), an annotation (`{cells}`), or a bracketed term.
fn simple(s: &str) -> Option<Unit> {
    if s.starts_with('{') && s.ends_with('}') {
        return Some(Unit::ONE);
    }
    if let Some(inner) = s.strip_prefix('(').and_then(|r| r.strip_suffix(')')) {
        return term(inner);
    }
    // An annotation after a unit (`mg{total}`) does not change it.
    let s = match s.find('{') {
        Some(i) if s.ends_with('}') && i > 0 => &s[..i],
        _ => s,
    };
    for sep in ["10*", "10^"] {
        if let Some(e) = s.strip_prefix(sep) {
            let e: i32 = e.parse().ok()?;
            return Some(Unit { factor: 10f64.powi(e), dim: [0; 6] });
        }
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Unit { factor: s.parse().ok()?, dim: [0; 6] });
    }
    if let Some(a) = atom(s) {
        return Some(a);
    }
    // A trailing exponent: `m2`, `s-1`.
    let digits = s.trim_end_matches(|c: char| c.is_ascii_digit());
    if digits.len() == s.len() {
        return None;
    }
    let (base, exp) = match digits.strip_suffix(['-', '+']) {
        Some(b) => (b, &s[b.len()..]),
        None => (digits, &s[digits.len()..]),
    };
    let e: i32 = exp.parse().ok()?;
    if base.is_empty() || e == 0 {
        return None;
    }
    Some(atom(base)?.pow(e))
}

/// A term: components joined by `.` and `/`, optionally starting with `/`.
fn term(s: &str) -> Option<Unit> {
    if s.is_empty() || s.len() > 100 {
        return None;
    }
    let mut out = Unit::ONE;
    let mut depth = 0i32;
    let mut start = 0;
    let mut divide = false;
    let bytes = s.as_bytes();
    if bytes[0] == b'/' {
        divide = true;
        start = 1;
    }
    let mut i = start;
    loop {
        let at_end = i == bytes.len();
        let c = if at_end { b'.' } else { bytes[i] };
        match c {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            b'.' | b'/' if depth == 0 => {
                let part = simple(s.get(start..i)?)?;
                out = out.mul(if divide { part.pow(-1) } else { part });
                divide = c == b'/';
                start = i + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return None;
        }
        if at_end {
            break;
        }
        i += 1;
    }
    (depth == 0).then_some(out)
}

/// A quantity in base units: the value and the dimension's canonical code
/// (`g.m-3`), or `None` if the unit is not understood.
pub fn canonical(value: f64, code: &str) -> Option<(f64, String)> {
    let unit = term(code.trim())?;
    // Twelve significant digits: the conversion's floating-point noise
    // must not make equal quantities differ.
    let v: f64 = format!("{:.11e}", value * unit.factor).parse().ok()?;
    if !v.is_finite() {
        return None;
    }
    let dim: Vec<String> = DIMS
        .iter()
        .zip(unit.dim)
        .filter(|(_, e)| *e != 0)
        .map(|(d, e)| if e == 1 { (*d).to_owned() } else { format!("{d}{e}") })
        .collect();
    Some((v, if dim.is_empty() { "1".into() } else { dim.join(".") }))
}

/// An order-preserving integer for a value in base units, so that the
/// index compares canonical values as integers on both backends: the
/// sign, then log10 of the magnitude in steps of 1e-15 (relative
/// precision about 2e-15).
pub fn sortable(v: f64) -> i64 {
    if v == 0.0 || !v.is_finite() {
        return 0;
    }
    let mag = 1_000_000_000_000_000_000i64 + (v.abs().log10() * 1e15).round() as i64;
    if v > 0.0 {
        mag
    } else {
        -mag
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(a: (f64, &str), b: (f64, &str)) {
        let (x, dx) = canonical(a.0, a.1).unwrap();
        let (y, dy) = canonical(b.0, b.1).unwrap();
        assert_eq!(dx, dy, "{a:?} {b:?}");
        assert!((x - y).abs() <= 1e-9 * x.abs().max(y.abs()), "{a:?}={x} {b:?}={y}");
        assert_eq!(sortable(x), sortable(y), "{a:?} {b:?}");
    }

    #[test]
    fn clinical_units_convert() {
        same((5.4, "mmol/L"), (5400.0, "umol/L"));
        same((1.0, "g/dL"), (10.0, "g/L"));
        same((100.0, "mg/dL"), (1.0, "g/L"));
        same((120.0, "mm[Hg]"), (15.998_64, "kPa"));
        same((70.0, "kg"), (70_000.0, "g"));
        same((1.0, "h"), (60.0, "min"));
        same((72.0, "/min"), (1.2, "/s"));
        same((5.0, "10*9/L"), (5000.0, "10*6/L"));
        same((1.0, "mL/(kg.min)"), (60.0, "mL/(kg.h)"));
        same((2.0, "[lb_av]"), (907.184_74, "g"));
        same((50.0, "%"), (0.5, "1"));
        same((3.0, "m2"), (300.0, "dm2"));
        same((1.0, "mg{total}"), (1000.0, "ug"));
        assert_eq!(canonical(1.0, "mmol/L").unwrap().1, "m-3.mol");
        assert_ne!(canonical(1.0, "mg/dL").unwrap().1, canonical(1.0, "mmol/L").unwrap().1, "no molar mass");
    }

    #[test]
    fn unknown_units_are_not_guessed() {
        for bad in ["Cel", "[degF]", "beats", "mg/", "(mg", "", "kmin", "10*x", "m0", "/"] {
            assert_eq!(canonical(1.0, bad), None, "{bad}");
        }
    }

    #[test]
    fn sortable_keeps_the_order() {
        let vals = [-1e9, -5.0, -1e-6, 0.0, 1e-9, 0.5, 1.0, 5.4, 1e12];
        let enc: Vec<i64> = vals.iter().map(|v| sortable(*v)).collect();
        assert!(enc.windows(2).all(|w| w[0] < w[1]), "{enc:?}");
    }
}
