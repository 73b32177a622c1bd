//! Run order: a topological sort of models by the tables they read, with a
//! named cycle when there is none.

use std::collections::HashMap;

use super::Model;
use crate::error::{Error, Result};

/// Orders models so each comes after every model it reads. Ties keep the
/// layer order (silver before gold) and then the name order, so the order is
/// stable from run to run.
pub fn run_order(mut models: Vec<Model>) -> Result<Vec<Model>> {
    models.sort_by(|a, b| (layer_rank(&a.layer), &a.name).cmp(&(layer_rank(&b.layer), &b.name)));
    let index: HashMap<String, usize> = models
        .iter()
        .enumerate()
        .map(|(i, m)| (m.table(), i))
        .collect();
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let mut marks = vec![Mark::New; models.len()];
    let mut order = Vec::with_capacity(models.len());
    let mut stack: Vec<usize> = Vec::new();

    fn visit(
        i: usize,
        models: &[Model],
        index: &HashMap<String, usize>,
        marks: &mut Vec<Mark>,
        stack: &mut Vec<usize>,
        order: &mut Vec<usize>,
    ) -> Result<()> {
        match marks[i] {
            Mark::Done => return Ok(()),
            Mark::Active => {
                let start = stack.iter().position(|&s| s == i).unwrap_or(0);
                let mut names: Vec<String> =
                    stack[start..].iter().map(|&s| models[s].table()).collect();
                names.push(models[i].table());
                return Err(Error::DependencyCycle {
                    cycle: names.join(" -> "),
                });
            }
            Mark::New => {}
        }
        marks[i] = Mark::Active;
        stack.push(i);
        for input in &models[i].inputs {
            if let Some(&j) = index.get(input) {
                visit(j, models, index, marks, stack, order)?;
            }
        }
        stack.pop();
        marks[i] = Mark::Done;
        order.push(i);
        Ok(())
    }

    for i in 0..models.len() {
        visit(i, &models, &index, &mut marks, &mut stack, &mut order)?;
    }
    let mut slots: Vec<Option<Model>> = models.into_iter().map(Some).collect();
    Ok(order.into_iter().filter_map(|i| slots[i].take()).collect())
}

fn layer_rank(layer: &str) -> usize {
    super::LAYERS
        .iter()
        .position(|l| *l == layer)
        .unwrap_or(usize::MAX)
}
