//! Turns a [`Ruleset`] into `nft -f` script text: a full resync, or the
//! changes from one ruleset to the next.
//!
//! Both are one script, loaded by `nft` as one transaction: the kernel never
//! shows a half-applied state. Commands are flat (`add chain ...`,
//! `add element ...`) and ordered so every reference is defined before use
//! and released before deletion: chains, then sets and maps, then rules,
//! then elements. Output is deterministic (everything is sorted by name).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;

use crate::ruleset::{Chain, Ruleset, Set, TABLE_NAME};

fn table() -> String {
    format!("inet {TABLE_NAME}")
}

fn add_chain(out: &mut String, name: &str, chain: &Chain) {
    let t = table();
    match &chain.base {
        Some(b) => writeln!(
            out,
            "add chain {t} {name} {{ type {} hook {} priority {}; policy accept; }}",
            b.kind, b.hook, b.priority
        ),
        None => writeln!(out, "add chain {t} {name}"),
    }
    .expect("writing to a String cannot fail");
}

fn add_set(out: &mut String, name: &str, set: &Set) {
    let t = table();
    let kind = if set.is_map() { "map" } else { "set" };
    let mut spec = set.key.clone();
    if let Some(v) = &set.value_type {
        write!(spec, " : {v}").expect("writing to a String cannot fail");
    }
    spec.push(';');
    if !set.flags.is_empty() {
        write!(spec, " flags {};", set.flags.join(",")).expect("writing to a String cannot fail");
    }
    if let Some(secs) = set.timeout_secs {
        write!(spec, " timeout {secs}s;").expect("writing to a String cannot fail");
    }
    writeln!(out, "add {kind} {t} {name} {{ {spec} }}").expect("writing to a String cannot fail");
}

fn add_rules(out: &mut String, name: &str, chain: &Chain) {
    let t = table();
    for rule in &chain.rules {
        writeln!(out, "add rule {t} {name} {rule}").expect("writing to a String cannot fail");
    }
}

fn element_text(key: &str, value: &Option<String>) -> String {
    match value {
        Some(v) => format!("{key} : {v}"),
        None => key.to_string(),
    }
}

/// One command for all of a set's elements (one line each): the kernel
/// looks the set up once per command, not once per element.
fn elements<'a>(
    out: &mut String,
    verb: &str,
    set: &str,
    items: impl Iterator<Item = ElementRef<'a>>,
) {
    let texts: Vec<String> = items
        .map(|(key, value)| {
            // Deletion names the key only.
            if verb == "delete" {
                key.clone()
            } else {
                element_text(key, value)
            }
        })
        .collect();
    if texts.is_empty() {
        return;
    }
    let t = table();
    writeln!(out, "{verb} element {t} {set} {{").expect("writing to a String cannot fail");
    let last = texts.len() - 1;
    for (i, text) in texts.iter().enumerate() {
        let comma = if i == last { "" } else { "," };
        writeln!(out, "\t{text}{comma}").expect("writing to a String cannot fail");
    }
    out.push_str("}\n");
}

/// The full script: recreates the table from nothing, in one transaction.
///
/// `add table` first, so `delete table` succeeds whether or not the table
/// exists; everything else in the kernel is left alone.
pub fn render_full(ruleset: &Ruleset) -> String {
    let t = table();
    let mut out = String::new();
    writeln!(out, "add table {t}").expect("writing to a String cannot fail");
    writeln!(out, "delete table {t}").expect("writing to a String cannot fail");
    writeln!(out, "add table {t}").expect("writing to a String cannot fail");
    for (name, chain) in &ruleset.chains {
        add_chain(&mut out, name, chain);
    }
    for (name, set) in &ruleset.sets {
        add_set(&mut out, name, set);
    }
    for (name, chain) in &ruleset.chains {
        add_rules(&mut out, name, chain);
    }
    for (name, set) in &ruleset.sets {
        elements(&mut out, "add", name, set.elements.iter());
    }
    out
}

/// One name of a merge of two sorted maps: only in the old one, only in the
/// new one, or in both.
enum Side<'a, T> {
    Old(&'a T),
    New(&'a T),
    Both(&'a T, &'a T),
}

/// Walks two sorted maps side by side, in name order. One sequential pass:
/// looking every name of one map up in the other costs a cache miss per
/// comparison, which dominated diffs of large rulesets.
fn merge<'a, K: Ord, T>(
    old: &'a BTreeMap<K, T>,
    new: &'a BTreeMap<K, T>,
) -> Vec<(&'a K, Side<'a, T>)> {
    let mut out = Vec::with_capacity(old.len().max(new.len()));
    let mut o = old.iter().peekable();
    let mut n = new.iter().peekable();
    loop {
        let next = match (o.peek(), n.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((ok, _)), Some((nk, _))) => ok.cmp(nk),
        };
        match next {
            Ordering::Less => {
                let (k, v) = o.next().expect("peeked");
                out.push((k, Side::Old(v)));
            }
            Ordering::Greater => {
                let (k, v) = n.next().expect("peeked");
                out.push((k, Side::New(v)));
            }
            Ordering::Equal => {
                let (k, ov) = o.next().expect("peeked");
                let (_, nv) = n.next().expect("peeked");
                out.push((k, Side::Both(ov, nv)));
            }
        }
    }
    out
}

type Elements = BTreeMap<String, Option<String>>;
type ElementRef<'a> = (&'a String, &'a Option<String>);

/// The elements of `old` that go or change value, and those of `new` that
/// are added or change value, each in key order.
fn element_changes<'a>(
    old: &'a Elements,
    new: &'a Elements,
) -> (Vec<ElementRef<'a>>, Vec<ElementRef<'a>>) {
    let (mut gone, mut added) = (Vec::new(), Vec::new());
    for (key, side) in merge(old, new) {
        match side {
            Side::Old(v) => gone.push((key, v)),
            Side::New(v) => added.push((key, v)),
            Side::Both(o, n) if o != n => {
                gone.push((key, o));
                added.push((key, n));
            }
            Side::Both(..) => {}
        }
    }
    (gone, added)
}

/// The script that turns `old` (what was last applied) into `new`, touching
/// only what changed; `None` when nothing changed.
///
/// `old` and `new` may also be partial views of the same names (a
/// planner's [`crate::plan::PlanChange::rulesets`]): a shared map present
/// in both with only some elements changes only those elements.
///
/// When a base chain's hook differs the change is structural: the full
/// script is returned instead. Dynamic sets whose definition is unchanged
/// keep their content (affinity state survives).
pub fn render_diff(old: &Ruleset, new: &Ruleset) -> Option<String> {
    let chains = merge(&old.chains, &new.chains);
    let hooks_changed = chains.iter().any(|(_, side)| match side {
        Side::Old(o) => o.base.is_some(),
        Side::New(n) => n.base.is_some(),
        Side::Both(o, n) => o.base != n.base,
    });
    if hooks_changed {
        return Some(render_full(new));
    }

    let t = table();
    let mut out = String::new();

    let sets = merge(&old.sets, &new.sets);
    let recreated_sets: BTreeSet<&String> = sets
        .iter()
        .filter(|(_, side)| matches!(side, Side::Both(o, n) if !o.same_definition(n)))
        .map(|(name, _)| *name)
        .collect();
    let removed_sets: BTreeSet<&String> = sets
        .iter()
        .filter(|(_, side)| matches!(side, Side::Old(_)))
        .map(|(name, _)| *name)
        .collect();
    let dropped_sets: HashSet<&str> = recreated_sets
        .iter()
        .chain(removed_sets.iter())
        .map(|name| name.as_str())
        .collect();
    let references_dropped_set = |chain: &Chain| {
        !dropped_sets.is_empty()
            && chain
                .rules
                .iter()
                .any(|rule| referenced_sets(rule).any(|set| dropped_sets.contains(set)))
    };
    // A chain is rewritten when its rules change or when it uses a set that
    // must be deleted (the reference would keep the set busy).
    let rewritten: BTreeSet<&String> = chains
        .iter()
        .filter(|(_, side)| {
            matches!(side, Side::Both(o, n) if o.rules != n.rules || references_dropped_set(o))
        })
        .map(|(name, _)| *name)
        .collect();
    let removed_chains: Vec<&String> = chains
        .iter()
        .filter(|(_, side)| matches!(side, Side::Old(_)))
        .map(|(name, _)| *name)
        .collect();

    // 1. New chains exist before anything jumps to them.
    for (name, side) in &chains {
        if let Side::New(chain) = side {
            add_chain(&mut out, name, chain);
        }
    }
    // 2. Empty the chains that change or go, releasing their references.
    for name in rewritten.iter().chain(removed_chains.iter()) {
        writeln!(out, "flush chain {t} {name}").expect("writing to a String cannot fail");
    }
    // 3. Drop map elements that go or change value (an element cannot be
    //    re-added with a new value while it exists); remember the additions.
    let mut additions: Vec<(&String, Vec<ElementRef<'_>>)> = Vec::new();
    for (name, side) in &sets {
        match side {
            Side::Old(_) => {}
            Side::New(n) => additions.push((name, n.elements.iter().collect())),
            Side::Both(_, n) if recreated_sets.contains(name) => {
                additions.push((name, n.elements.iter().collect()));
            }
            Side::Both(o, n) => {
                let (gone, added) = element_changes(&o.elements, &n.elements);
                elements(&mut out, "delete", name, gone.into_iter());
                additions.push((name, added));
            }
        }
    }
    // 4. Sets that go or are redefined.
    for name in removed_sets.iter().chain(recreated_sets.iter()) {
        let kind = if old.sets[*name].is_map() {
            "map"
        } else {
            "set"
        };
        writeln!(out, "delete {kind} {t} {name}").expect("writing to a String cannot fail");
    }
    // 5. New and redefined sets.
    for (name, side) in &sets {
        match side {
            Side::New(set) => add_set(&mut out, name, set),
            Side::Both(_, set) if recreated_sets.contains(name) => add_set(&mut out, name, set),
            _ => {}
        }
    }
    // 6. Rules of new and rewritten chains.
    for (name, side) in &chains {
        match side {
            Side::New(chain) => add_rules(&mut out, name, chain),
            Side::Both(_, chain) if rewritten.contains(name) => add_rules(&mut out, name, chain),
            _ => {}
        }
    }
    // 7. New and changed elements.
    for (name, added) in additions {
        elements(&mut out, "add", name, added.into_iter());
    }
    // 8. Chains nothing refers to any more.
    for name in &removed_chains {
        writeln!(out, "delete chain {t} {name}").expect("writing to a String cannot fail");
    }
    // Every difference between two rulesets writes at least one command.
    (!out.is_empty()).then_some(out)
}

/// The names of the sets `rule` refers to (`@name`).
fn referenced_sets(rule: &str) -> impl Iterator<Item = &str> {
    rule.match_indices('@').map(move |(i, _)| {
        let rest = &rule[i + 1..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || "/._-".contains(c)))
            .unwrap_or(rest.len());
        &rest[..end]
    })
}

/// Whether `rule` names `@set` (as a whole word, not a prefix of a longer name).
#[cfg(test)]
fn rule_references(rule: &str, set: &str) -> bool {
    referenced_sets(rule).any(|name| name == set)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn set(elements: &[(&str, &str)]) -> Set {
        Set {
            key: "type inet_proto . inet_service".to_string(),
            value_type: Some("verdict".to_string()),
            flags: Vec::new(),
            timeout_secs: None,
            elements: elements
                .iter()
                .map(|(k, v)| (k.to_string(), Some(v.to_string())))
                .collect(),
        }
    }

    fn chain(rules: &[&str]) -> Chain {
        Chain {
            base: None,
            rules: rules.iter().map(ToString::to_string).collect(),
        }
    }

    fn ruleset(chains: &[(&str, Chain)], sets: &[(&str, Set)]) -> Ruleset {
        Ruleset {
            chains: chains
                .iter()
                .map(|(n, c)| (n.to_string(), c.clone()))
                .collect::<BTreeMap<_, _>>(),
            sets: sets
                .iter()
                .map(|(n, s)| (n.to_string(), s.clone()))
                .collect(),
        }
    }

    #[test]
    fn identical_rulesets_need_no_script() {
        let r = ruleset(&[("a", chain(&["drop"]))], &[("m", set(&[]))]);
        assert_eq!(render_diff(&r, &r.clone()), None);
    }

    #[test]
    fn diff_swaps_an_endpoint_in_one_ordered_script() {
        let old = ruleset(
            &[
                ("svc", chain(&["goto ep-a"])),
                ("ep-a", chain(&["dnat ip to 10.0.0.1:80"])),
            ],
            &[("m", set(&[("tcp . 1", "goto svc"), ("tcp . 2", "drop")]))],
        );
        let new = ruleset(
            &[
                ("svc", chain(&["goto ep-b"])),
                ("ep-b", chain(&["dnat ip to 10.0.0.2:80"])),
            ],
            &[(
                "m",
                set(&[("tcp . 1", "goto svc"), ("tcp . 2", "goto svc")]),
            )],
        );
        let script = render_diff(&old, &new).expect("a change");
        assert_eq!(
            script,
            "add chain inet portico ep-b\n\
             flush chain inet portico svc\n\
             flush chain inet portico ep-a\n\
             delete element inet portico m {\n\
             \ttcp . 2\n\
             }\n\
             add rule inet portico ep-b dnat ip to 10.0.0.2:80\n\
             add rule inet portico svc goto ep-b\n\
             add element inet portico m {\n\
             \ttcp . 2 : goto svc\n\
             }\n\
             delete chain inet portico ep-a\n"
        );
    }

    #[test]
    fn redefined_set_is_recreated_and_its_users_rewritten() {
        let mut aff = Set {
            key: "type ipv4_addr".to_string(),
            flags: vec!["dynamic".to_string(), "timeout".to_string()],
            timeout_secs: Some(10),
            ..Set::default()
        };
        let old = ruleset(
            &[("ep", chain(&["update @aff { ip saddr }"]))],
            &[("aff", aff.clone())],
        );
        aff.timeout_secs = Some(20);
        let new = ruleset(
            &[("ep", chain(&["update @aff { ip saddr }"]))],
            &[("aff", aff)],
        );
        let script = render_diff(&old, &new).expect("a change");
        assert_eq!(
            script,
            "flush chain inet portico ep\n\
             delete set inet portico aff\n\
             add set inet portico aff { type ipv4_addr; flags dynamic,timeout; timeout 20s; }\n\
             add rule inet portico ep update @aff { ip saddr }\n"
        );
    }

    #[test]
    fn set_references_match_whole_names() {
        assert!(rule_references("ip saddr @aff-a goto x", "aff-a"));
        assert!(rule_references("update @aff-a { ip saddr }", "aff-a"));
        assert!(!rule_references("ip saddr @aff-ab goto x", "aff-a"));
        assert!(rule_references("vmap @m", "m"));
    }
}
