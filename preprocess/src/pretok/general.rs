//! `Split` regexes other than the hand-scanned ones ([`Pattern`](super::Pattern)): any pattern of the
//! regular subset below, compiled to one leftmost-first multi-pattern automaton (`regex-automata`),
//! giving exactly the pieces that the `tokenizers` crate's `Split` gets from Oniguruma.
//!
//! **Alternatives.** The pattern is parsed with `regex-syntax` and its top-level alternation becomes one
//! automaton pattern per alternative; leftmost-first across patterns is the alternation's priority, so
//! the match at the leftmost start is that of the first alternative matching there, as in a
//! backtracking engine. Without look-around or backreferences the automaton and Oniguruma agree on every
//! regular construct but one: a loop over a sub-pattern that can match the empty string, which Oniguruma
//! leaves early; such repetitions are refused. Nearly every piece starts where the previous one ended, so
//! the search there is anchored, by a forward dense DFA alone (built up front, a few MB; `meta::Regex`
//! if it would be too large); only where nothing matches there does `meta::Regex` search on.
//!
//! **The look-ahead.** Split patterns end their whitespace handling with the alternative `\s+(?!\S)`: a
//! whitespace run, less its last character when a non-space follows. It is compiled as `\s+` (greedy, so
//! the whole run) and its match is cut afterwards (`space_run_end`); where the run is one character
//! before a non-space the alternative fails there, and the alternatives after it are tried anchored at
//! the same start ([`RegexSplit`]'s `after`), then the next start, as Oniguruma backtracks. It may stand
//! anywhere in the alternation; any other look-around is refused.
//!
//! **Characters as Oniguruma has them.** No class is taken from `regex-syntax`'s Unicode tables: each
//! class of the pattern (`\p{…}`, `\s`, `\d`, `\w`, `[…]`, `.`), by its source text, is run through the
//! same Oniguruma build over every scalar value and replaced by the explicit ranges it matched (computed
//! once per process and class). An escaped literal is checked to mean the same character to Oniguruma. In
//! a case-insensitive group `(?i:…)` only ASCII literals are accepted, each replaced by the characters
//! Oniguruma folds onto it (`ſ` for `s`, `K` for `k`); Oniguruma also folds some pairs of letters onto one
//! character (`ss` onto `ß`, `st` onto `ﬆ`), so a case-insensitive literal string holding such a pair is
//! refused ([`MULTI_CHARACTER_FOLDS`]), as are classes and repetitions of more than a literal there.
//!
//! **Refused** (the caller then uses the `tokenizers` crate): anything `regex-syntax` cannot parse
//! (look-around, backreferences, atomic groups, possessive repetitions), assertions (Oniguruma's `^` and
//! `$` are line anchors and `\b` uses its own word class), flags other than `i` in a group and flags set
//! without a group (their scope differs), `x{n}?` (Ruby syntax reads it as `(?:x{n})?`), a repetition of a
//! repetition, and a class or escape that Oniguruma does not accept on its own.
//!
//! **Pieces.** [`GeneralSplit`] applies a sequence of splits, each within every piece of the one before,
//! as a `Sequence` of `Split` pre-tokenizers does. Matches are found as Oniguruma's `find_iter` finds
//! them (an empty match right at the end of the previous match is skipped by one character), and each
//! split keeps matches and gaps ([`Keep`]) as the `tokenizers` crate's `Split` behaviour does, dropping
//! empty pieces.

use std::sync::{Arc, Mutex, OnceLock};

use regex_automata::dfa::{Automaton, StartKind, dense};
use regex_automata::meta::Regex;
use regex_automata::nfa::thompson;
use regex_automata::{Anchored, Input};
use regex_syntax::ast::{self, Ast};
use regex_syntax::hir::{self, Hir};
use rustc_hash::FxHashMap as HashMap;
use tokenizers::utils::SysRegex;

/// The look-ahead of the whitespace alternative `\s+(?!\S)`.
const LOOKAHEAD: &str = r"(?!\S)";
/// An empty named group standing for [`LOOKAHEAD`] while `regex-syntax` parses the pattern.
const MARK: &str = "(?<flame_not_before_non_space>)";
const MARK_NAME: &str = "flame_not_before_non_space";

/// Pairs of ASCII letters (lower-cased) that Oniguruma's case-insensitive matching folds onto a single
/// character: `ff` `fi` `fl` (`ﬀ` `ﬁ` `ﬂ`, and in `ﬃ` `ﬄ`), `ss` (`ß`, `ẞ`) and `st` (`ﬅ`, `ﬆ`). A test
/// checks every pair of ASCII letters against Oniguruma.
pub const MULTI_CHARACTER_FOLDS: [&str; 5] = ["ff", "fi", "fl", "ss", "st"];

/// The largest dense DFA built for a split (cl100k's pattern needs 2 MB, built in 30 ms).
const DENSE_BYTES: usize = 16 << 20;

/// Which pieces of a `Split` are kept: its `behavior` and `invert`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// `Isolated`: matches and gaps.
    All,
    /// `Removed` with `invert`: the matches.
    Matches,
    /// `Removed` without `invert`: the gaps.
    Gaps,
}

impl Keep {
    /// The pieces kept by the `Split` pre-tokenizer `split` (a `tokenizer.json` object), if its behaviour
    /// is one of the three above.
    pub fn of_split(split: &serde_json::Value) -> Option<Self> {
        match (split["behavior"].as_str()?, split["invert"].as_bool()?) {
            ("Isolated", _) => Some(Self::All),
            ("Removed", true) => Some(Self::Matches),
            ("Removed", false) => Some(Self::Gaps),
            _ => None,
        }
    }
}

/// A sequence of splits, each applied within every piece of the one before.
#[derive(Debug)]
pub struct GeneralSplit {
    stages: Vec<(RegexSplit, Keep)>,
}

impl GeneralSplit {
    /// The splits of `patterns` (in order), or `None` if one is outside the subset this module compiles.
    pub fn new(patterns: &[(&str, Keep)]) -> Option<Self> {
        let stages = patterns
            .iter()
            .map(|&(pattern, keep)| Some((RegexSplit::new(pattern)?, keep)))
            .collect::<Option<Vec<_>>>()?;
        Some(Self { stages })
    }

    /// The splits of `splits`, `Split` pre-tokenizers of a `tokenizer.json` (a regex or a string each), if
    /// each keeps what [`Keep`] describes and compiles.
    pub fn from_json(splits: &[serde_json::Value]) -> Option<Self> {
        let patterns = splits
            .iter()
            .map(|split| {
                if split["type"] != "Split" {
                    return None;
                }
                let pattern = &split["pattern"];
                let pattern = match (pattern["Regex"].as_str(), pattern["String"].as_str()) {
                    (Some(regex), None) => regex.to_owned(),
                    // The `tokenizers` crate escapes a string into a regex (and finds nothing for "").
                    (None, Some(string)) if !string.is_empty() => regex_syntax::escape(string),
                    _ => return None,
                };
                Some((pattern, Keep::of_split(split)?))
            })
            .collect::<Option<Vec<_>>>()?;
        if patterns.is_empty() {
            return None;
        }
        let patterns: Vec<(&str, Keep)> = patterns.iter().map(|(p, k)| (p.as_str(), *k)).collect();
        Self::new(&patterns)
    }

    /// Calls `piece` with each non-empty piece of `text`, in order.
    pub fn split<'t>(&self, text: &'t str, mut piece: impl FnMut(&'t str)) {
        self.split_from(0, text, &mut piece);
    }

    fn split_from<'t>(&self, stage: usize, text: &'t str, piece: &mut dyn FnMut(&'t str)) {
        match self.stages.get(stage) {
            None => piece(text),
            Some((regex, keep)) => {
                regex.pieces(text, *keep, &mut |p| self.split_from(stage + 1, p, piece));
            }
        }
    }
}

/// One split regex.
#[derive(Debug)]
pub struct RegexSplit {
    /// Every alternative, by priority.
    all: Regex,
    /// The same as a forward dense DFA alone, for the anchored search that finds most pieces (`all`'s
    /// per-search work, its cache pool and the choice of engine, costs as much as the DFA's own), unless
    /// it would be larger than [`DENSE_BYTES`].
    forward: Option<dense::DFA<Vec<u32>>>,
    /// Per alternative: whether it is `\s+(?!\S)`.
    space_runs: Vec<bool>,
    /// Per `\s+(?!\S)` alternative: the alternatives after it, for an anchored search where it fails
    /// (`None` if it is the last).
    after: Vec<Option<Regex>>,
}

impl RegexSplit {
    /// The compiled `pattern`, or `None` if it is outside the subset this module compiles.
    pub fn new(pattern: &str) -> Option<Self> {
        let marked = pattern.replace(LOOKAHEAD, MARK);
        let ast = ast::parse::Parser::new().parse(&marked).ok()?;
        let alternatives = match &ast {
            Ast::Alternation(alternation) => alternation.asts.iter().collect(),
            other => vec![other],
        };
        let compiler = Compiler { pattern: &marked };
        let mut hirs = Vec::with_capacity(alternatives.len());
        let mut space_runs = Vec::with_capacity(alternatives.len());
        for alternative in alternatives {
            let space_run = space_run(alternative);
            hirs.push(compiler.hir(space_run.unwrap_or(alternative), false)?);
            space_runs.push(space_run.is_some());
        }
        // Every look-ahead of the text must be the end of a whitespace alternative.
        if space_runs.iter().filter(|&&s| s).count() != pattern.matches(LOOKAHEAD).count() {
            return None;
        }
        let build = |hirs: &[Hir]| Regex::builder().build_many_from_hir(hirs).ok();
        let after = (0..hirs.len())
            .map(|i| {
                if space_runs[i] && i + 1 < hirs.len() {
                    build(&hirs[i + 1..]).map(Some)
                } else {
                    Some(None)
                }
            })
            .collect::<Option<Vec<_>>>()?;
        let nfa = thompson::Compiler::new().build_many_from_hir(&hirs).ok()?;
        let config = dense::Config::new()
            .start_kind(StartKind::Anchored)
            .dfa_size_limit(Some(DENSE_BYTES))
            .determinize_size_limit(Some(4 * DENSE_BYTES));
        let forward = dense::Builder::new()
            .configure(config)
            .build_from_nfa(&nfa)
            .ok();
        Some(Self {
            all: build(&hirs)?,
            forward,
            space_runs,
            after,
        })
    }

    /// The leftmost-first match that starts at `from`, if one does: the pattern and its end.
    fn anchored_at(&self, text: &str, from: usize) -> Option<(usize, usize)> {
        let input = Input::new(text).range(from..).anchored(Anchored::Yes);
        // A DFA fails only on a quit byte or look-around, which these patterns do not have.
        if let Some(Ok(found)) = self.forward.as_ref().map(|dfa| longest_run(dfa, &input)) {
            return found;
        }
        self.all
            .search(&input)
            .map(|m| (m.pattern().as_usize(), m.end()))
    }

    /// Oniguruma's match at or after `from`: the leftmost start, and there the first alternative that
    /// matches.
    fn find_at(&self, text: &str, mut from: usize) -> Option<(usize, usize)> {
        loop {
            // Most pieces start where the last ended: an anchored search there needs no reverse scan for
            // the start, and where it matches, the leftmost match is it.
            let (start, (mut alternative, mut end)) =
                if let Some(found) = self.anchored_at(text, from) {
                    (from, found)
                } else {
                    let found = self.all.search(&Input::new(text).range(from..))?;
                    (found.start(), (found.pattern().as_usize(), found.end()))
                };
            loop {
                if !self.space_runs[alternative] {
                    return Some((start, end));
                }
                if let Some(end) = space_run_end(text, start, end) {
                    return Some((start, end));
                }
                let Some(after) = &self.after[alternative] else {
                    break;
                };
                let input = Input::new(text).range(start..).anchored(Anchored::Yes);
                let Some(next) = after.search(&input) else {
                    break;
                };
                alternative += 1 + next.pattern().as_usize();
                end = next.end();
            }
            // No alternative matches at `start` (a whitespace character, so not the end).
            from = start + char_len_at(text, start);
        }
    }

    /// Calls `found` with each match, as Oniguruma's `find_iter` gives them (the `tokenizers` crate's
    /// `Split` lists them so): an empty match ending where the previous match ended is skipped, and the
    /// search goes on one character further.
    fn for_each_match(&self, text: &str, mut found: impl FnMut(usize, usize)) {
        let (mut from, mut last_end) = (0, None);
        while from <= text.len() {
            let Some((start, end)) = self.find_at(text, from) else {
                return;
            };
            if start == end && last_end == Some(end) {
                from += char_len_at(text, from);
                continue;
            }
            from = end;
            last_end = Some(end);
            found(start, end);
        }
    }

    /// Calls `piece` with each non-empty match or gap of `text` that `keep` keeps.
    fn pieces<'t>(&self, text: &'t str, keep: Keep, piece: &mut dyn FnMut(&'t str)) {
        let mut gap_start = 0;
        self.for_each_match(text, |start, end| {
            if keep != Keep::Matches && gap_start < start {
                piece(&text[gap_start..start]);
            }
            if keep != Keep::Gaps && start < end {
                piece(&text[start..end]);
            }
            gap_start = end;
        });
        if keep != Keep::Matches && gap_start < text.len() {
            piece(&text[gap_start..]);
        }
    }
}

/// `dfa`'s anchored leftmost-first match at the start of `input`: its pattern and end.
///
/// `try_search_fwd` does the same, but it records the match at every byte of a run of match states
/// (after a piece's first character, a greedy run is nothing else) and checks for acceleration there;
/// here only the last match state is kept. A transition into a match state on the byte at `at` means a
/// match ending at `at` (DFA matches are delayed by a byte), and the end of the text is one more
/// transition.
fn longest_run(
    dfa: &dense::DFA<Vec<u32>>,
    input: &Input<'_>,
) -> Result<Option<(usize, usize)>, regex_automata::MatchError> {
    let bytes = input.haystack();
    // Without look-behind, the start state is the same whatever precedes the search.
    let mut sid = match dfa.universal_start_state(Anchored::Yes) {
        Some(sid) => sid,
        None => dfa.start_state_forward(input)?,
    };
    let mut last = None;
    let mut at = input.start();
    while at < input.end() {
        sid = dfa.next_state(sid, bytes[at]);
        if dfa.is_special_state(sid) {
            if dfa.is_match_state(sid) {
                last = Some((sid, at));
            } else if dfa.is_dead_state(sid) {
                return Ok(last.map(|(sid, end)| (dfa.match_pattern(sid, 0).as_usize(), end)));
            } else if dfa.is_quit_state(sid) {
                return Err(regex_automata::MatchError::quit(bytes[at], at));
            }
        }
        at += 1;
    }
    sid = dfa.next_eoi_state(sid);
    if dfa.is_match_state(sid) {
        last = Some((sid, at));
    }
    Ok(last.map(|(sid, end)| (dfa.match_pattern(sid, 0).as_usize(), end)))
}

/// The UTF-8 length of the character at `at` (1 at the end, where Oniguruma steps past the text).
fn char_len_at(text: &str, at: usize) -> usize {
    text[at..].chars().next().map_or(1, char::len_utf8)
}

/// The end of `\s+(?!\S)`'s match at `start`, given the end of the whole whitespace run there: the run at
/// the end of the text, else the run less its last character, which fails if that leaves nothing.
fn space_run_end(text: &str, start: usize, run_end: usize) -> Option<usize> {
    if run_end == text.len() {
        return Some(run_end);
    }
    let last = text[..run_end]
        .chars()
        .next_back()
        .map_or(0, char::len_utf8);
    (run_end - last > start).then_some(run_end - last)
}

/// The `\s+` of an alternative that is exactly `\s+(?!\S)` (with [`MARK`] for the look-ahead).
fn space_run(alternative: &Ast) -> Option<&Ast> {
    let Ast::Concat(concat) = alternative else {
        return None;
    };
    let [run, mark] = concat.asts.as_slice() else {
        return None;
    };
    let is_run = matches!(run, Ast::Repetition(rep)
        if rep.greedy
            && rep.op.kind == ast::RepetitionKind::OneOrMore
            && matches!(&*rep.ast, Ast::ClassPerl(class)
                if class.kind == ast::ClassPerlKind::Space && !class.negated));
    let is_mark = matches!(mark, Ast::Group(group)
        if matches!(&group.kind, ast::GroupKind::CaptureName { name, .. } if name.name == MARK_NAME)
            && matches!(&*group.ast, Ast::Empty(_)));
    (is_run && is_mark).then_some(run)
}

/// Translates the parsed pattern to `regex-syntax`'s HIR with Oniguruma's characters.
struct Compiler<'p> {
    pattern: &'p str,
}

impl Compiler<'_> {
    fn text(&self, span: &ast::Span) -> &str {
        &self.pattern[span.start.offset..span.end.offset]
    }

    /// `ast` as HIR, `fold` inside a case-insensitive group; `None` outside the subset.
    fn hir(&self, ast: &Ast, fold: bool) -> Option<Hir> {
        match ast {
            Ast::Empty(_) => Some(Hir::empty()),
            Ast::Literal(literal) => self.literal(literal, fold),
            Ast::Dot(span) if !fold => self.class(span),
            Ast::ClassUnicode(class) if !fold => self.class(&class.span),
            Ast::ClassPerl(class) if !fold => self.class(&class.span),
            Ast::ClassBracketed(class) if !fold => self.class(&class.span),
            Ast::Repetition(repetition) => self.repetition(repetition, fold),
            Ast::Group(group) => self.hir(&group.ast, group_folds(group, fold)?),
            Ast::Alternation(alternation) => Some(Hir::alternation(
                alternation
                    .asts
                    .iter()
                    .map(|ast| self.hir(ast, fold))
                    .collect::<Option<_>>()?,
            )),
            Ast::Concat(concat) => {
                if fold && !folds_one_character_at_a_time(&concat.asts) {
                    return None;
                }
                Some(Hir::concat(
                    concat
                        .asts
                        .iter()
                        .map(|ast| self.hir(ast, fold))
                        .collect::<Option<_>>()?,
                ))
            }
            _ => None,
        }
    }

    fn literal(&self, literal: &ast::Literal, fold: bool) -> Option<Hir> {
        if literal.kind != ast::LiteralKind::Verbatim
            && !onig_means(self.text(&literal.span), literal.c)
        {
            return None;
        }
        if !fold {
            return Some(Hir::literal(literal.c.to_string().into_bytes()));
        }
        if !literal.c.is_ascii() {
            return None;
        }
        let folds = case_folds(literal.c)?;
        Some(Hir::class(hir::Class::Unicode(hir::ClassUnicode::new(
            folds.iter().map(|&c| hir::ClassUnicodeRange::new(c, c)),
        ))))
    }

    fn class(&self, span: &ast::Span) -> Option<Hir> {
        let ranges = onig_class(self.text(span))?;
        Some(Hir::class(hir::Class::Unicode(hir::ClassUnicode::new(
            ranges.iter().copied(),
        ))))
    }

    fn repetition(&self, repetition: &ast::Repetition, fold: bool) -> Option<Hir> {
        use ast::{RepetitionKind as Kind, RepetitionRange as Range};
        let (min, max) = match repetition.op.kind {
            Kind::ZeroOrOne => (0, Some(1)),
            Kind::ZeroOrMore => (0, None),
            Kind::OneOrMore => (1, None),
            // Ruby syntax reads `x{n}?` as `(?:x{n})?`.
            Kind::Range(Range::Exactly(n)) if repetition.greedy => (n, Some(n)),
            Kind::Range(Range::Exactly(_)) => return None,
            Kind::Range(Range::AtLeast(n)) => (n, None),
            Kind::Range(Range::Bounded(m, n)) => (m, Some(n)),
        };
        // `{1, 3}` is a literal to Oniguruma.
        if self.text(&repetition.op.span).contains(char::is_whitespace)
            || matches!(&*repetition.ast, Ast::Repetition(_))
            || fold && !matches!(&*repetition.ast, Ast::Literal(_))
        {
            return None;
        }
        let sub = self.hir(&repetition.ast, fold)?;
        // A backtracking engine leaves a loop whose body matched nothing; an automaton does not.
        if max != Some(1) && sub.properties().minimum_len() == Some(0) {
            return None;
        }
        Some(Hir::repetition(hir::Repetition {
            min,
            max,
            greedy: repetition.greedy,
            sub: Box::new(sub),
        }))
    }
}

/// Whether a group's contents are case-insensitive (`fold` outside it); `None` for flags other than `i`.
fn group_folds(group: &ast::Group, fold: bool) -> Option<bool> {
    let ast::GroupKind::NonCapturing(flags) = &group.kind else {
        return Some(fold);
    };
    let (mut fold, mut negated) = (fold, false);
    for item in &flags.items {
        match item.kind {
            ast::FlagsItemKind::Negation => negated = true,
            ast::FlagsItemKind::Flag(ast::Flag::CaseInsensitive) => fold = !negated,
            ast::FlagsItemKind::Flag(_) => return None,
        }
    }
    Some(fold)
}

/// Whether a case-insensitive concatenation is literals only, no two of them folding together onto one
/// character ([`MULTI_CHARACTER_FOLDS`]).
fn folds_one_character_at_a_time(asts: &[Ast]) -> bool {
    let mut previous: Option<char> = None;
    for ast in asts {
        let Ast::Literal(literal) = ast else {
            return false;
        };
        let c = literal.c.to_ascii_lowercase();
        if let Some(p) = previous
            && MULTI_CHARACTER_FOLDS.contains(&format!("{p}{c}").as_str())
        {
            return false;
        }
        previous = Some(c);
    }
    true
}

/// A class as Oniguruma has it, shared by the patterns that use it.
type Ranges = Arc<[hir::ClassUnicodeRange]>;

/// Every scalar value in order, which Oniguruma runs each class over (4.3 MB, built once).
fn every_character() -> &'static str {
    static EVERY: OnceLock<String> = OnceLock::new();
    EVERY.get_or_init(|| (0..=0x10_FFFF).filter_map(char::from_u32).collect())
}

/// The characters Oniguruma's class `class` (its source text) matches, as ranges, computed once per
/// process and class text; `None` if Oniguruma does not accept it.
fn onig_class(class: &str) -> Option<Ranges> {
    static CLASSES: OnceLock<Mutex<HashMap<String, Option<Ranges>>>> = OnceLock::new();
    let classes = CLASSES.get_or_init(Mutex::default);
    if let Some(known) = classes.lock().expect("not poisoned").get(class) {
        return known.clone();
    }
    let ranges = SysRegex::new(&format!("(?:{class})"))
        .ok()
        .and_then(|regex| class_ranges(&regex));
    classes
        .lock()
        .expect("not poisoned")
        .insert(class.to_owned(), ranges.clone());
    ranges
}

/// The characters `regex` matches, each alone, as ranges; `None` if it matches none, or more than one
/// character at a time: then Oniguruma did not read the text as a class (`\pL` is `pL` to it).
fn class_ranges(regex: &SysRegex) -> Option<Ranges> {
    let every = every_character();
    let mut ranges: Vec<hir::ClassUnicodeRange> = Vec::new();
    for (start, end) in regex.find_iter(every) {
        let mut chars = every[start..end].chars();
        let (Some(c), None) = (chars.next(), chars.next()) else {
            return None;
        };
        match ranges.last_mut() {
            // Consecutive in `every`, so consecutive scalar values (or the two sides of the surrogates).
            Some(last) if every[..start].ends_with(last.end()) => {
                *last = hir::ClassUnicodeRange::new(last.start(), c);
            }
            _ => ranges.push(hir::ClassUnicodeRange::new(c, c)),
        }
    }
    (!ranges.is_empty()).then(|| ranges.into())
}

/// Whether Oniguruma reads the escape `text` as the character `c`.
fn onig_means(text: &str, c: char) -> bool {
    let Ok(regex) = SysRegex::new(&format!(r"\A(?:{text})\z")) else {
        return false;
    };
    regex.find_iter(&c.to_string()).next().is_some()
}

/// The characters that Oniguruma's `(?i:c)` matches, for an ASCII `c` (itself included).
fn case_folds(c: char) -> Option<Vec<char>> {
    // The characters outside ASCII that fold onto ASCII ones, found once.
    static NON_ASCII: OnceLock<Vec<char>> = OnceLock::new();
    let non_ascii = NON_ASCII.get_or_init(|| {
        let every = every_character();
        let regex = SysRegex::new(r"(?i:[\x00-\x7f])").expect("a valid class");
        regex
            .find_iter(every)
            .filter_map(|(start, _)| every[start..].chars().next())
            .filter(|c| !c.is_ascii())
            .collect()
    });
    let regex = SysRegex::new(&format!(r"\A(?i:\x{{{:x}}})\z", u32::from(c))).ok()?;
    Some(
        (0..128u8)
            .map(char::from)
            .chain(non_ascii.iter().copied())
            .filter(|x| regex.find_iter(&x.to_string()).next().is_some())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_whitespace_alternative_ends_before_the_last_space_of_a_run() {
        assert_eq!(space_run_end("a  b", 1, 3), Some(2));
        assert_eq!(space_run_end("a b", 1, 2), None);
        assert_eq!(space_run_end("a  ", 1, 3), Some(3));
        assert_eq!(space_run_end("a \u{3000}b", 1, 5), Some(2));
    }

    #[test]
    fn the_kelvin_sign_and_the_long_s_fold_onto_ascii() {
        assert_eq!(case_folds('k').unwrap(), ['K', 'k', '\u{212a}']);
        assert_eq!(case_folds('s').unwrap(), ['S', 's', '\u{17f}']);
        assert_eq!(case_folds('\'').unwrap(), ['\'']);
    }
}
