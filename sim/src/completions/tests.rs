//! The embeddings' promises, in numbers: the same text the same vector, near-duplicates close,
//! unrelated texts far; and one embedding an input, in order.

use serde_json::{json, Value};

use super::*;

const FRANCE: &str = "What is the capital of France?";

/// The embeddings of a request whose `input` is `input`, as the answer carries them.
fn vectors(input: Value) -> Vec<Vec<f64>> {
    let answer = embeddings(&json!({"input": input}), "text-embedding-3-small");
    answer["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let v = d["embedding"].as_array().unwrap();
            v.iter().map(|x| x.as_f64().unwrap()).collect()
        })
        .collect()
}

/// The one embedding of `text`, from an answer.
fn vector(text: &str) -> Vec<f64> {
    vectors(json!(text)).remove(0)
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn the_same_text_gets_the_same_vector() {
    let a = vector(FRANCE);
    let b = vector(FRANCE);
    assert_eq!(bits(&a), bits(&b));
    assert!((cosine(&a, &b) - 1.0).abs() < 1e-12);
    // The answer carries the vector as computed, and its JSON text is the same each time.
    assert_eq!(bits(&a), bits(&embedding(FRANCE)));
    let answer = || embeddings(&json!({"input": FRANCE}), "emb").to_string();
    assert_eq!(answer(), answer());
    assert_eq!(a.len(), EMBEDDING_DIMENSIONS);
    assert!((cosine(&a, &a) - 1.0).abs() < 1e-12);
    assert!((a.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-12);
}

#[test]
fn near_duplicates_are_close() {
    let a = vector(FRANCE);
    for other in [
        "what is the capital of France",
        "What's the capital of France?",
        "  WHAT is the capital of france!! ",
    ] {
        let c = cosine(&a, &vector(other));
        assert!(c >= 0.9, "{FRANCE:?} vs {other:?}: cosine {c}");
    }
}

#[test]
fn unrelated_texts_are_far() {
    let a = vector(FRANCE);
    for other in [
        "Write a haiku about autumn leaves",
        "How do I bake sourdough bread?",
        "",
    ] {
        let c = cosine(&a, &vector(other));
        assert!(c <= 0.5, "{FRANCE:?} vs {other:?}: cosine {c}");
    }
}

#[test]
fn a_text_without_alphanumerics_gets_a_fixed_unit_vector() {
    let empty = vector("");
    assert_eq!(bits(&empty), bits(&vector("?! ...")));
    assert_eq!(empty[0], 1.0);
    assert!(empty[1..].iter().all(|x| *x == 0.0));
    // No input at all is one empty text too.
    assert_eq!(vectors(Value::Null), vec![empty]);
}

#[test]
fn an_array_gets_one_vector_a_string_in_order() {
    let texts = [FRANCE, "Write a haiku about autumn leaves", "hello"];
    let answer = embeddings(&json!({"input": texts}), "emb");
    let data = answer["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    for (i, (d, text)) in data.iter().zip(texts).enumerate() {
        assert_eq!(d["object"], "embedding");
        assert_eq!(d["index"], i);
        let v: Vec<f64> = d["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(bits(&v), bits(&vector(text)), "input {i}");
    }
    assert_eq!(answer["object"], "list");
    assert_eq!(answer["model"], "emb");
    assert_eq!(
        answer["usage"],
        json!({"prompt_tokens": 3, "total_tokens": 3})
    );
}

#[test]
fn token_arrays_embed_their_ids() {
    // One token array is one input; an array of them one input each.
    let one = vectors(json!([9906, 1917, 0]));
    assert_eq!(one, vec![embedding("9906 1917 0")]);
    let two = vectors(json!([[9906, 1917], [15339]]));
    assert_eq!(two, vec![embedding("9906 1917"), embedding("15339")]);
    let usage = &embeddings(&json!({"input": [1, 2, 3]}), "emb")["usage"];
    assert_eq!(usage["prompt_tokens"], 3);
}
