//! Attentive multi-field learning (AMF), the paper's baseline extension: each field of a news item
//! becomes a vector `r_i` (title via BERT, category, subcategory, entities pooled by attention),
//! and the news vector is `r~ = sum_i w_i r_i` with `w_i = softmax(q^r . tanh(W^r r_i))`.
use crate::user::AdditiveAttention;
use tch::{Tensor, nn, nn::Module};

#[derive(Debug)]
pub struct Amf {
    category: nn::Embedding,
    subcategory: nn::Embedding,
    entity_projection: nn::Linear,
    entity_pooling: AdditiveAttention,
    field_attention: AdditiveAttention,
}

impl Amf {
    /// `entity_dim`: width of MIND's entity vectors (100), projected to the BERT width `dim`.
    pub fn new(p: &nn::Path, dim: i64, categories: i64, subcategories: i64, entity_dim: i64) -> Self {
        let hidden = 200.min(dim);
        Amf {
            category: nn::embedding(p / "category", categories, dim, Default::default()),
            subcategory: nn::embedding(p / "subcategory", subcategories, dim, Default::default()),
            entity_projection: nn::linear(p / "entity_projection", entity_dim, dim, Default::default()),
            entity_pooling: AdditiveAttention::new(&(p / "entity_pooling"), dim, hidden),
            field_attention: AdditiveAttention::new(&(p / "field_attention"), dim, hidden),
        }
    }

    /// # Shapes
    /// `title [N, d]`, `category [N]`, `subcategory [N]` (int64), `entities [N, E, entity_dim]`,
    /// `entity_mask [N, E]` (bool; a news item without entities gets a zero entity field) -> `[N, d]`.
    pub fn forward(
        &self,
        title: &Tensor,
        category: &Tensor,
        subcategory: &Tensor,
        entities: &Tensor,
        entity_mask: &Tensor,
    ) -> Tensor {
        let entity_field =
            self.entity_pooling.forward(&self.entity_projection.forward(entities).tanh(), Some(entity_mask));
        let fields = Tensor::stack(
            &[
                title.shallow_clone(),
                self.category.forward(category),
                self.subcategory.forward(subcategory),
                entity_field,
            ],
            1,
        ); // [N, 4, d]
        self.field_attention.forward(&fields, None)
    }
}
