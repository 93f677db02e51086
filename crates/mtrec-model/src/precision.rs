//! The mixed-precision policy, as CUDA autocast and torchtitan's bf16 training apply it, on CPU and
//! CUDA alike (`train.precision`). With [`Precision::Bf16`]:
//! - in bf16: BERT's matmuls (the stacked query/key/value projection, the attention scores and
//!   the attention-weighted values, the attention output projection, the feed-forward up and
//!   down projections) and the feed-forward's GELU: where the FLOPs are;
//! - in f32: the embeddings, every LayerNorm and so the residual stream between the blocks, the
//!   softmax of the attention probabilities (rounded to bf16 only for the value matmul), the
//!   category and NER heads' logits and their log-softmax losses, AMF, the user encoders, the click
//!   scores and the main loss; in mtrec-train the gradient norms and the surgery's inner products;
//! - the weights stay f32 (the master copy AdamW updates): each matmul rounds its operands to bf16
//!   as it runs, so the gradients reach the variables in f32 and are reduced in f32.
//!
//! With [`Precision::F32`] everything is f32.
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor, nn};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Precision {
    /// The kind BERT's matmuls compute in.
    pub fn matmul_kind(self) -> Kind {
        match self {
            Precision::F32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
        }
    }

    /// `x W^T + b` in the matmul kind (operands rounded to it; the result stays in it).
    pub fn linear(self, x: &Tensor, layer: &nn::Linear) -> Tensor {
        let kind = self.matmul_kind();
        x.to_kind(kind).linear(&layer.ws.to_kind(kind), layer.bs.as_ref().map(|b| b.to_kind(kind)))
    }
}
