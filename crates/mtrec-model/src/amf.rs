//! Attentive multi-field learning (AMF), the paper's baseline extension (MTRec, Bi et al. 2022):
//! each field of a news item becomes a vector `r_i`, and the news vector is `r~ = sum_i w_i r_i`
//! with `w_i = softmax(q^r . tanh(W^r r_i))`. The paper's fields are the title (via BERT), the
//! category (an embedding) and the entities (their vectors, projected and pooled by attention);
//! a subcategory embedding is an optional extra field (`model.amf_subcategory`).
//!
//! Absent fields are masked out of the field attention: a news item without entities gets weight
//! exactly 0 on its entity field (not softmax weight on a zero vector), whatever its padded entity
//! slots hold. Title and category are always present (MIND requires a category; the category id
//! of the padding news nid 0 is 0, a real category, but nid 0 is never encoded: training points
//! padded history slots at a zero row, evaluation zeroes row 0, and the user encoders mask them).
use crate::user::AdditiveAttention;
use tch::{Kind, Tensor, nn, nn::Module};

#[derive(Debug)]
pub struct Amf {
    category: nn::Embedding,
    subcategory: Option<nn::Embedding>,
    entity_projection: nn::Linear,
    entity_pooling: AdditiveAttention,
    field_attention: AdditiveAttention,
}

impl Amf {
    /// `entity_dim`: width of MIND's entity vectors (100), projected to the BERT width `dim`.
    /// `subcategories`: `Some(count)` adds the subcategory field.
    pub fn new(p: &nn::Path, dim: i64, categories: i64, subcategories: Option<i64>, entity_dim: i64) -> Self {
        let hidden = 200.min(dim);
        Amf {
            category: nn::embedding(p / "category", categories, dim, Default::default()),
            subcategory: subcategories.map(|n| nn::embedding(p / "subcategory", n, dim, Default::default())),
            entity_projection: nn::linear(p / "entity_projection", entity_dim, dim, Default::default()),
            entity_pooling: AdditiveAttention::new(&(p / "entity_pooling"), dim, hidden),
            field_attention: AdditiveAttention::new(&(p / "field_attention"), dim, hidden),
        }
    }

    /// Number of fields: title, category, [subcategory,] entities (the entity field is last).
    pub fn num_fields(&self) -> i64 {
        if self.subcategory.is_some() { 4 } else { 3 }
    }

    /// The field vectors `[N, F, d]` and their mask `[N, F]` (false = absent: the entity field of
    /// a news item with no entity).
    fn fields(
        &self,
        title: &Tensor,
        category: &Tensor,
        subcategory: &Tensor,
        entities: &Tensor,
        entity_mask: &Tensor,
    ) -> (Tensor, Tensor) {
        let entity_field =
            self.entity_pooling.forward(&self.entity_projection.forward(entities).tanh(), Some(entity_mask));
        let mut fields = vec![title.shallow_clone(), self.category.forward(category)];
        if let Some(table) = &self.subcategory {
            fields.push(table.forward(subcategory));
        }
        fields.push(entity_field);
        let n = title.size()[0];
        let present = Tensor::ones([n, fields.len() as i64 - 1], (Kind::Bool, title.device()));
        let has_entities = entity_mask.any_dim(-1, true); // [N, 1]
        (Tensor::stack(&fields, 1), Tensor::cat(&[present, has_entities], 1))
    }

    /// # Shapes
    /// `title [N, d]`, `category [N]`, `subcategory [N]` (int64; unused without the subcategory
    /// field), `entities [N, E, entity_dim]`, `entity_mask [N, E]` (bool, true = a real entity)
    /// -> `[N, d]`.
    pub fn forward(
        &self,
        title: &Tensor,
        category: &Tensor,
        subcategory: &Tensor,
        entities: &Tensor,
        entity_mask: &Tensor,
    ) -> Tensor {
        let (fields, mask) = self.fields(title, category, subcategory, entities, entity_mask);
        self.field_attention.forward(&fields, Some(&mask))
    }

    /// The field attention weights `w` `[N, F]` (fields in [`Amf::num_fields`] order; exactly 0
    /// on an absent entity field).
    pub fn field_weights(
        &self,
        title: &Tensor,
        category: &Tensor,
        subcategory: &Tensor,
        entities: &Tensor,
        entity_mask: &Tensor,
    ) -> Tensor {
        let (fields, mask) = self.fields(title, category, subcategory, entities, entity_mask);
        self.field_attention.weights(&fields, Some(&mask))
    }
}
