//! The fact table of the HHH world: fictional countries whose capital, language, currency,
//! main export and population band are fixed by a seed, so that the oracle can check every
//! claim a response makes.
//!
//! The countries, cities, languages and currencies are made-up words built from syllables.
//! That matters twice: no real-world fact a pretrained model knows can contradict the table,
//! and every value is a single token that belongs to exactly one attribute, so a claim can
//! be parsed back from free text without ambiguity ("Durnak" can only be a capital).

use std::collections::{BTreeSet, HashMap};

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// How many countries `World::generate` invents: enough for a few hundred distinct prompts,
/// few enough that a small model can learn every fact from the shipped corpus.
pub const N_ENTITIES: usize = 40;

/// Main exports are real, common words: they read naturally and are shared between countries
/// (so a wrong export is always available), and none of them is a made-up word.
pub const EXPORT_GOODS: [&str; 12] = [
    "tea", "copper", "salt", "wool", "timber", "rice", "silk", "coffee", "tin", "amber", "cotton",
    "wine",
];

/// Population is a band rather than a number: one token per value keeps claims parseable.
pub const POPULATION_BANDS: [&str; 5] = ["tiny", "small", "medium", "large", "huge"];

/// The things a prompt can ask about a country, and a response can claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attribute {
    Capital,
    Language,
    Currency,
    Export,
    Population,
}

impl Attribute {
    /// Every attribute, in the fixed order used for enumeration and for the facts file.
    pub const ALL: [Attribute; 5] = [
        Attribute::Capital,
        Attribute::Language,
        Attribute::Currency,
        Attribute::Export,
        Attribute::Population,
    ];

    /// The snake_case name used in ids, files and the facts table's keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Attribute::Capital => "capital",
            Attribute::Language => "language",
            Attribute::Currency => "currency",
            Attribute::Export => "export",
            Attribute::Population => "population",
        }
    }

    /// The inverse of `as_str`.
    pub fn parse(name: &str) -> Option<Attribute> {
        Attribute::ALL
            .into_iter()
            .find(|attribute| attribute.as_str() == name)
    }
}

/// One fictional country and its facts. Field order is the key order of `facts.jsonl`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entity {
    pub name: String,
    pub capital: String,
    pub language: String,
    pub currency: String,
    pub export: String,
    pub population: String,
}

impl Entity {
    /// The true value of `attribute` for this country.
    pub fn value(&self, attribute: Attribute) -> &str {
        match attribute {
            Attribute::Capital => &self.capital,
            Attribute::Language => &self.language,
            Attribute::Currency => &self.currency,
            Attribute::Export => &self.export,
            Attribute::Population => &self.population,
        }
    }
}

/// The fact table plus the indexes the oracle needs to read claims out of text.
///
/// Built only through `generate`, `from_entities` or `from_facts_jsonl`, which check that
/// every token is unambiguous; the entities are therefore read through `entities()` rather
/// than a public field, so that the indexes can never go stale.
#[derive(Clone, Debug)]
pub struct World {
    entities: Vec<Entity>,
    /// Lowercased entity name -> index into `entities`.
    entity_idx_by_token: HashMap<String, usize>,
    /// Lowercased value token -> the attribute it belongs to and its spelling in the table.
    value_by_token: HashMap<String, (Attribute, String)>,
}

impl World {
    /// Invents `N_ENTITIES` countries from `seed`. The same seed gives the same world on
    /// every platform (ChaCha8 and rand's portable sampling).
    pub fn generate(seed: u64) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut used_tokens: BTreeSet<String> = EXPORT_GOODS
            .iter()
            .chain(POPULATION_BANDS.iter())
            .map(|word| word.to_string())
            .collect();
        let mut entities = Vec::with_capacity(N_ENTITIES);
        for _ in 0..N_ENTITIES {
            let name = unique_word(&mut rng, &mut used_tokens, COUNTRY_SUFFIXES, true);
            let capital = unique_word(&mut rng, &mut used_tokens, CAPITAL_SUFFIXES, true);
            let language = unique_word(&mut rng, &mut used_tokens, LANGUAGE_SUFFIXES, true);
            let currency = unique_word(&mut rng, &mut used_tokens, CURRENCY_SUFFIXES, false);
            let export = EXPORT_GOODS
                .choose(&mut rng)
                .expect("non-empty")
                .to_string();
            let population = POPULATION_BANDS
                .choose(&mut rng)
                .expect("non-empty")
                .to_string();
            entities.push(Entity {
                name,
                capital,
                language,
                currency,
                export,
                population,
            });
        }
        World::from_entities(entities).expect("generated names are unique by construction")
    }

    /// Builds a world from a table, checking that the oracle can parse claims about it:
    /// every name and value is one word, names and capital/language/currency values are
    /// unique, and no word stands for two different things (an entity and a value, or values
    /// of two attributes).
    pub fn from_entities(entities: Vec<Entity>) -> Result<World, String> {
        if entities.len() < 2 {
            return Err(format!(
                "a world needs at least 2 entities (wrong facts are borrowed from another one), got {}",
                entities.len()
            ));
        }
        let mut entity_idx_by_token = HashMap::new();
        let mut value_by_token: HashMap<String, (Attribute, String)> = HashMap::new();
        for (entity_idx, entity) in entities.iter().enumerate() {
            check_single_word(&entity.name, "name", entity_idx)?;
            let name_token = entity.name.to_lowercase();
            if entity_idx_by_token
                .insert(name_token.clone(), entity_idx)
                .is_some()
            {
                return Err(format!("entity name `{}` appears twice", entity.name));
            }
            for attribute in Attribute::ALL {
                let value = entity.value(attribute);
                check_single_word(value, attribute.as_str(), entity_idx)?;
                let value_token = value.to_lowercase();
                match value_by_token.get(&value_token) {
                    None => {
                        value_by_token.insert(value_token, (attribute, value.to_string()));
                    }
                    Some((existing_attribute, _)) if *existing_attribute != attribute => {
                        return Err(format!(
                            "`{value}` is both a {} and a {} value",
                            existing_attribute.as_str(),
                            attribute.as_str()
                        ));
                    }
                    Some(_) if attribute_values_must_be_unique(attribute) => {
                        return Err(format!(
                            "{} `{value}` belongs to two entities",
                            attribute.as_str()
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        if let Some(clash) = entities
            .iter()
            .map(|entity| entity.name.to_lowercase())
            .find(|token| value_by_token.contains_key(token))
        {
            return Err(format!("`{clash}` is both an entity name and a value"));
        }
        Ok(World {
            entities,
            entity_idx_by_token,
            value_by_token,
        })
    }

    /// Reads `facts.jsonl`: one JSON object per line with the keys of `Entity`.
    pub fn from_facts_jsonl(text: &str) -> Result<World, String> {
        let mut entities = Vec::new();
        for (line_idx, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let entity: Entity = serde_json::from_str(line)
                .map_err(|error| format!("facts line {}: {error}", line_idx + 1))?;
            entities.push(entity);
        }
        World::from_entities(entities)
    }

    /// Writes the table as `facts.jsonl`, one entity per line, keys in a fixed order.
    pub fn to_facts_jsonl(&self) -> String {
        let mut text = String::new();
        for entity in &self.entities {
            text.push_str(&serde_json::to_string(entity).expect("entity serialises"));
            text.push('\n');
        }
        text
    }

    /// The countries, in table order.
    pub fn entities(&self) -> &[Entity] {
        &self.entities
    }

    /// The country called `name` (case-insensitive).
    pub fn entity(&self, name: &str) -> Option<&Entity> {
        self.entity_idx_by_token
            .get(&name.to_lowercase())
            .map(|&entity_idx| &self.entities[entity_idx])
    }

    /// The true value of `attribute` for the country called `entity_name`.
    pub fn value(&self, entity_name: &str, attribute: Attribute) -> Option<&str> {
        self.entity(entity_name)
            .map(|entity| entity.value(attribute))
    }

    /// The distinct values `attribute` takes in the table, in order of first appearance:
    /// the pool from which wrong answers are drawn.
    pub fn values(&self, attribute: Attribute) -> Vec<&str> {
        let mut seen = BTreeSet::new();
        self.entities
            .iter()
            .map(|entity| entity.value(attribute))
            .filter(|value| seen.insert(value.to_lowercase()))
            .collect()
    }

    /// Whether `value` is the true value of `attribute` for `entity_name` (case-insensitive).
    pub fn is_true(&self, entity_name: &str, attribute: Attribute, value: &str) -> bool {
        self.value(entity_name, attribute)
            .is_some_and(|true_value| true_value.eq_ignore_ascii_case(value))
    }

    /// The entity a lowercased word names, if any.
    pub(crate) fn entity_for_token(&self, lowercase_token: &str) -> Option<&Entity> {
        self.entity_idx_by_token
            .get(lowercase_token)
            .map(|&entity_idx| &self.entities[entity_idx])
    }

    /// The attribute and table spelling of a lowercased word that is a known value, if any.
    pub(crate) fn value_for_token(&self, lowercase_token: &str) -> Option<(Attribute, &str)> {
        self.value_by_token
            .get(lowercase_token)
            .map(|(attribute, value)| (*attribute, value.as_str()))
    }
}

/// Capitals, languages and currencies identify their country; exports and population bands
/// are shared, as in the real world.
fn attribute_values_must_be_unique(attribute: Attribute) -> bool {
    matches!(
        attribute,
        Attribute::Capital | Attribute::Language | Attribute::Currency
    )
}

fn check_single_word(value: &str, field: &str, entity_idx: usize) -> Result<(), String> {
    if value.is_empty() || !value.chars().all(|character| character.is_alphanumeric()) {
        return Err(format!(
            "entity {}: {field} `{value}` must be one word of letters or digits",
            entity_idx + 1
        ));
    }
    Ok(())
}

const ONSETS: [&str; 18] = [
    "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "th", "sh", "dr", "kr",
];
const VOWELS: [&str; 5] = ["a", "e", "i", "o", "u"];
/// Each kind of name has its own endings, so that a reader can tell a city from a language.
const COUNTRY_SUFFIXES: &[&str] = &["ria", "nia", "dor", "mar", "esh", "via"];
const CAPITAL_SUFFIXES: &[&str] = &["dak", "holm", "mir", "grad", "vik", "rin", "bek"];
const LANGUAGE_SUFFIXES: &[&str] = &["ani", "ese", "ic", "ol", "ur"];
const CURRENCY_SUFFIXES: &[&str] = &["rk", "lt", "rn", "x", "nd", "sk"];

/// Two random syllables and a suffix, redrawn until the word is new. Two syllables keep
/// made-up words from landing on short English words that templates use.
fn unique_word(
    rng: &mut impl Rng,
    used_tokens: &mut BTreeSet<String>,
    suffixes: &[&str],
    capitalised: bool,
) -> String {
    loop {
        let mut word = String::new();
        for _ in 0..2 {
            word.push_str(ONSETS.choose(rng).expect("non-empty"));
            word.push_str(VOWELS.choose(rng).expect("non-empty"));
        }
        word.push_str(suffixes.choose(rng).expect("non-empty"));
        if used_tokens.insert(word.clone()) {
            return if capitalised { capitalise(&word) } else { word };
        }
    }
}

fn capitalise(word: &str) -> String {
    let mut characters = word.chars();
    match characters.next() {
        Some(first) => first.to_uppercase().chain(characters).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A three-country world with readable names, shared by the tests of every world module.
    pub(crate) fn small_world() -> World {
        let entity = |name: &str,
                      capital: &str,
                      language: &str,
                      currency: &str,
                      export: &str,
                      population: &str| Entity {
            name: name.to_string(),
            capital: capital.to_string(),
            language: language.to_string(),
            currency: currency.to_string(),
            export: export.to_string(),
            population: population.to_string(),
        };
        World::from_entities(vec![
            entity("Veloria", "Durnak", "Tashani", "dralk", "tea", "large"),
            entity("Ostrana", "Kestrin", "Moravic", "zelt", "copper", "small"),
            entity("Mirevia", "Pelgrad", "Suvani", "korn", "tea", "huge"),
        ])
        .expect("valid test world")
    }

    #[test]
    fn generation_is_deterministic_and_seed_dependent() {
        assert_eq!(
            World::generate(1).to_facts_jsonl(),
            World::generate(1).to_facts_jsonl()
        );
        assert_ne!(
            World::generate(1).to_facts_jsonl(),
            World::generate(2).to_facts_jsonl()
        );
    }

    #[test]
    fn generated_worlds_are_valid_for_many_seeds() {
        for seed in 0..50 {
            let world = World::generate(seed);
            assert_eq!(world.entities().len(), N_ENTITIES);
            // Re-validating the serialised table exercises every uniqueness check.
            let reread = World::from_facts_jsonl(&world.to_facts_jsonl()).expect("valid");
            assert_eq!(reread.entities(), world.entities());
        }
    }

    #[test]
    fn lookups_are_case_insensitive() {
        let world = small_world();
        assert_eq!(world.value("veloria", Attribute::Capital), Some("Durnak"));
        assert_eq!(
            world.entity("OSTRANA").map(|entity| entity.export.as_str()),
            Some("copper")
        );
        assert!(world.is_true("Mirevia", Attribute::Language, "suvani"));
        assert!(!world.is_true("Mirevia", Attribute::Language, "Tashani"));
        assert_eq!(world.value("Atlantis", Attribute::Capital), None);
        assert_eq!(world.values(Attribute::Export), vec!["tea", "copper"]);
        assert_eq!(
            world.value_for_token("kestrin"),
            Some((Attribute::Capital, "Kestrin"))
        );
        assert_eq!(world.value_for_token("veloria"), None);
    }

    #[test]
    fn ambiguous_tables_are_rejected() {
        let mut entities = small_world().entities().to_vec();
        entities[1].capital = "Durnak".to_string();
        let error = World::from_entities(entities).unwrap_err();
        assert_eq!(error, "capital `Durnak` belongs to two entities");

        let mut entities = small_world().entities().to_vec();
        entities[1].language = "Durnak".to_string();
        let error = World::from_entities(entities).unwrap_err();
        assert_eq!(error, "`Durnak` is both a capital and a language value");

        let mut entities = small_world().entities().to_vec();
        entities[1].capital = "Veloria".to_string();
        let error = World::from_entities(entities).unwrap_err();
        assert_eq!(error, "`veloria` is both an entity name and a value");

        let mut entities = small_world().entities().to_vec();
        entities[0].capital = "Durnak City".to_string();
        let error = World::from_entities(entities).unwrap_err();
        assert_eq!(
            error,
            "entity 1: capital `Durnak City` must be one word of letters or digits"
        );
    }

    #[test]
    fn facts_jsonl_round_trips_and_reports_lines() {
        let world = small_world();
        let text = world.to_facts_jsonl();
        assert!(text.starts_with(
            r#"{"name":"Veloria","capital":"Durnak","language":"Tashani","currency":"dralk","export":"tea","population":"large"}"#
        ));
        let reread = World::from_facts_jsonl(&text).expect("valid");
        assert_eq!(reread.entities(), world.entities());

        let error = World::from_facts_jsonl("{\"name\": \"X\"}\n").unwrap_err();
        assert!(error.starts_with("facts line 1: missing field"), "{error}");
    }
}
