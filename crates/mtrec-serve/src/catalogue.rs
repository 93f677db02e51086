//! The news the service knows: one vector per news item in a `[rows, d]` table on the model's
//! device (row 0 the zero padding vector, as in evaluation), and the news id of each row.
//! News added while the service runs take the next rows, or replace the row of their id; the
//! table grows by doubling, so adding news one at a time costs amortised one row copy each.
use crate::error::RequestError;
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

pub struct Catalogue {
    /// `[capacity, d]` f32; rows `0..rows` are in use.
    vectors: Tensor,
    rows: usize,
    row_of: HashMap<String, i64>,
    /// News id of each row (`""` at 0).
    ids: Vec<String>,
}

impl Catalogue {
    /// A catalogue of `vectors` (`[n + 1, d]`, row 0 padding), row `i` being news `ids[i - 1]`.
    pub fn new(vectors: Tensor, ids: Vec<String>) -> Catalogue {
        let rows = ids.len() + 1;
        assert_eq!(vectors.size()[0], rows as i64, "one vector per news id, and the padding row");
        let row_of = ids.iter().enumerate().map(|(i, id)| (id.clone(), i as i64 + 1)).collect();
        let mut all = Vec::with_capacity(rows);
        all.push(String::new());
        all.extend(ids);
        Catalogue { vectors: vectors.to_kind(Kind::Float), rows, row_of, ids: all }
    }

    /// News items, padding excluded.
    pub fn news(&self) -> usize {
        self.rows - 1
    }

    pub fn device(&self) -> Device {
        self.vectors.device()
    }

    /// `[rows, d]`: the vectors in use (a view; row 0 padding).
    pub fn table(&self) -> Tensor {
        self.vectors.narrow(0, 0, self.rows as i64)
    }

    pub fn id(&self, row: i64) -> &str {
        &self.ids[row as usize]
    }

    /// The rows of `ids`; an unknown id is an error naming `field[index]` and the id.
    pub fn rows_of(&self, field: &str, ids: &[String]) -> Result<Vec<i32>, RequestError> {
        ids.iter()
            .enumerate()
            .map(|(i, id)| {
                self.row_of.get(id).map(|&row| row as i32).ok_or_else(|| {
                    RequestError::invalid(format!("{field}[{i}]"), format!("unknown news id {id:?}"))
                })
            })
            .collect()
    }

    /// Sets the vectors of `ids` (`[ids, d]`): a known id's row is replaced, a new id appended.
    /// Returns how many were new.
    pub fn upsert(&mut self, ids: &[String], vectors: &Tensor) -> usize {
        let mut rows = Vec::with_capacity(ids.len());
        let mut added = 0;
        for id in ids {
            let row = *self.row_of.entry(id.clone()).or_insert_with(|| {
                added += 1;
                self.ids.push(id.clone());
                (self.ids.len() - 1) as i64
            });
            rows.push(row);
        }
        self.reserve(self.ids.len());
        self.rows = self.ids.len();
        let index = Tensor::from_slice(&rows).to_device(self.device());
        tch::no_grad(|| {
            let _ = self.vectors.index_copy_(0, &index, &vectors.to_kind(Kind::Float));
        });
        added
    }

    /// Room for `rows` rows, at least doubling the table when it must grow.
    fn reserve(&mut self, rows: usize) {
        let capacity = self.vectors.size()[0] as usize;
        if rows <= capacity {
            return;
        }
        let d = self.vectors.size()[1];
        let bigger = Tensor::zeros([(2 * capacity).max(rows) as i64, d], (Kind::Float, self.device()));
        tch::no_grad(|| bigger.narrow(0, 0, self.rows as i64).copy_(&self.table()));
        self.vectors = bigger;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn news_are_added_replaced_and_found_by_id() {
        let start = Tensor::from_slice(&[0.0f32, 0.0, 1.0, 1.0, 2.0, 2.0]).view([3, 2]);
        let mut catalogue = Catalogue::new(start, ids(&["A", "B"]));
        assert_eq!(catalogue.rows_of("history", &ids(&["B", "A"])).unwrap(), [2, 1]);
        let err = catalogue.rows_of("candidates", &ids(&["A", "Z"])).unwrap_err();
        assert_eq!((err.field.as_str(), err.message.as_str()), ("candidates[1]", "unknown news id \"Z\""));
        // One replaced, three new: the table grows past its first capacity (3 rows).
        let new = Tensor::from_slice(&[9.0f32, 9.0, 3.0, 3.0, 4.0, 4.0, 5.0, 5.0]).view([4, 2]);
        assert_eq!(catalogue.upsert(&ids(&["A", "C", "D", "E"]), &new), 3);
        assert_eq!(catalogue.news(), 5);
        let table: Vec<f32> = Vec::try_from(catalogue.table().reshape([-1])).unwrap();
        assert_eq!(table, [0.0, 0.0, 9.0, 9.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0, 5.0, 5.0]);
        assert_eq!(catalogue.rows_of("history", &ids(&["E"])).unwrap(), [5]);
        assert_eq!(catalogue.id(5), "E");
    }
}
