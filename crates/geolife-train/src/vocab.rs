//! Label vocabulary: output column <-> real species id. `full` is the seed's max id + 1
//! columns (column = id); `compact` keeps the species seen in train. Predictions always carry
//! real ids.

use std::collections::HashMap;

use crate::config::VocabularyKind as Kind;

/// Column -> species id, and the reverse map.
#[derive(Debug, Clone, PartialEq)]
pub struct Vocabulary {
    species: Vec<u32>,
    column: HashMap<u32, usize>,
}

impl Vocabulary {
    /// Build from the train species list (`compact`) or as ids `0..full_size` (`full`).
    pub fn new(kind: Kind, train_species: &[u32], full_size: usize) -> Self {
        let mut species: Vec<u32> = match kind {
            Kind::Full => {
                let max = train_species
                    .iter()
                    .copied()
                    .max()
                    .map_or(0, |m| m as usize + 1);
                (0..full_size.max(max) as u32).collect()
            }
            Kind::Compact => train_species.to_vec(),
        };
        species.sort_unstable();
        species.dedup();
        Self::from_species(species)
    }

    /// From an explicit column list (as saved in a run folder).
    pub fn from_species(species: Vec<u32>) -> Self {
        let column = species.iter().enumerate().map(|(c, &s)| (s, c)).collect();
        Self { species, column }
    }

    pub fn len(&self) -> usize {
        self.species.len()
    }

    pub fn is_empty(&self) -> bool {
        self.species.is_empty()
    }

    /// Real species id of every column.
    pub fn species(&self) -> &[u32] {
        &self.species
    }

    /// Column of a species id (none when the species is outside the vocabulary).
    pub fn column(&self, species: u32) -> Option<usize> {
        self.column.get(&species).copied()
    }

    /// Multi-hot targets of a batch, row-major `[labels.len(), self.len()]`.
    pub fn multi_hot(&self, labels: &[Vec<u32>], out: &mut Vec<f32>) {
        out.clear();
        out.resize(labels.len() * self.len(), 0.0);
        for (row, ids) in labels.iter().enumerate() {
            for &id in ids {
                if let Some(c) = self.column(id) {
                    out[row * self.len() + c] = 1.0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_vocabulary_is_identity_up_to_max_id() {
        let v = Vocabulary::new(Kind::Full, &[2, 5, 9], 11_255);
        assert_eq!(v.len(), 11_255);
        assert_eq!(v.column(9), Some(9));
        assert_eq!(v.species()[11_254], 11_254);
    }

    #[test]
    fn compact_vocabulary_maps_real_ids() {
        let v = Vocabulary::new(Kind::Compact, &[9, 2, 5], 11_255);
        assert_eq!(v.species(), &[2, 5, 9]);
        assert_eq!(v.column(5), Some(1));
        assert_eq!(v.column(3), None);
        let mut t = Vec::new();
        v.multi_hot(&[vec![9, 3], vec![2, 2]], &mut t);
        assert_eq!(t, vec![0.0, 0.0, 1.0, 1.0, 0.0, 0.0]);
    }
}
