//! Property tests of the MCP tool name ↔ lion function name table: every
//! name valid, all distinct, readable back, independent of listing order,
//! and a tool's name its own unless another tool claims the same one.

use std::collections::BTreeSet;

use agentic_mcp::names::{NameTable, candidate, is_valid_function_name};
use proptest::prelude::*;

/// Tool names as servers write them: plain, dotted, slashed, unicode,
/// empty, long, and the hashed form of another name in the same list.
fn tool_names() -> impl Strategy<Value = Vec<String>> {
    let name = prop_oneof![
        "[a-z_-]{1,12}",
        "[a-zA-Z0-9_./ -]{0,80}",
        "[a-zé☃ß.]{0,20}",
        any::<String>(),
    ];
    prop::collection::btree_set(name, 0..40).prop_flat_map(|set| {
        let names: Vec<String> = set.into_iter().collect();
        let n = names.len();
        // Add hashed forms of some names as tools of their own: the
        // collision a hostile server can make on purpose.
        prop::collection::vec(any::<prop::sample::Index>(), 0..4).prop_map(move |picks| {
            let mut all: BTreeSet<String> = names.iter().cloned().collect();
            if n > 0 {
                for i in picks {
                    all.insert(candidate(&names[i.index(n)]));
                }
            }
            all.into_iter().collect()
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_table_is_valid_unique_reversible_and_order_free(
        names in tool_names(),
        seed in any::<u64>(),
    ) {
        let table = NameTable::build(names.iter().map(String::as_str)).unwrap();
        prop_assert_eq!(table.len(), names.len());
        let mut functions = BTreeSet::new();
        for name in &names {
            let f = table.function_name(name).expect("every tool is mapped");
            prop_assert!(is_valid_function_name(f), "{f:?} for {name:?}");
            prop_assert!(functions.insert(f.to_owned()), "{f:?} given twice");
            prop_assert_eq!(table.mcp_name(f), Some(name.as_str()));
        }
        // Any listing order gives the same table.
        let mut shuffled = names.clone();
        let mut s = seed;
        for i in (1..shuffled.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (s >> 33) as usize % (i + 1));
        }
        let again = NameTable::build(shuffled.iter().map(String::as_str)).unwrap();
        prop_assert_eq!(&again, &table);
        // A tool no other tool competes with keeps its own candidate, so
        // adding or removing other tools does not rename it.
        for name in &names {
            let c = candidate(name);
            let contested = names.iter().any(|o| o != name && candidate(o) == c);
            if !contested {
                prop_assert_eq!(table.function_name(name), Some(c.as_str()));
            }
        }
    }

    #[test]
    fn candidates_are_valid_and_plain_names_are_kept(name in any::<String>()) {
        let c = candidate(&name);
        prop_assert!(is_valid_function_name(&c), "{c:?}");
        prop_assert_eq!(c == name, is_valid_function_name(&name));
    }
}
