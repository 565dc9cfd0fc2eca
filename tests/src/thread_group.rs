//! An in-process [`Collective`]: N threads of one test acting as the N ranks of a data-parallel
//! job. Contributions are summed in rank order, so results do not depend on arrival order.

use std::sync::{Arc, Condvar, Mutex};

use byol_core::distributed::Collective;
use byol_core::{Error, Result};

#[derive(Default)]
struct Round {
    generation: u64,
    slots: Vec<Option<Vec<f64>>>,
    gathered: Vec<Option<Vec<f32>>>,
    result: Vec<f64>,
    all: Vec<Vec<f32>>,
}

struct Shared {
    world: usize,
    round: Mutex<Round>,
    done: Condvar,
}

/// One rank of a thread group made by [`thread_group`].
pub struct ThreadRank {
    rank: usize,
    shared: Arc<Shared>,
}

/// The `world` ranks of one group, to hand one to each thread.
pub fn thread_group(world: usize) -> Vec<ThreadRank> {
    let shared = Arc::new(Shared {
        world,
        round: Mutex::new(Round {
            slots: vec![None; world],
            gathered: vec![None; world],
            ..Round::default()
        }),
        done: Condvar::new(),
    });
    (0..world)
        .map(|rank| ThreadRank {
            rank,
            shared: Arc::clone(&shared),
        })
        .collect()
}

impl ThreadRank {
    /// Contributes `mine` (and `gather`) and returns the round's sum (and every rank's part).
    fn exchange(&self, mine: Vec<f64>, gather: Vec<f32>) -> Result<(Vec<f64>, Vec<Vec<f32>>)> {
        let poisoned = |_| Error::Distributed("a thread of the group panicked".into());
        let mut round = self.shared.round.lock().map_err(poisoned)?;
        let generation = round.generation;
        round.slots[self.rank] = Some(mine);
        round.gathered[self.rank] = Some(gather);
        if round.slots.iter().all(Option::is_some) {
            let slots: Vec<Vec<f64>> = round.slots.iter_mut().filter_map(Option::take).collect();
            let mut sum = vec![0f64; slots[0].len()];
            for slot in &slots {
                if slot.len() != sum.len() {
                    return Err(Error::Distributed("ranks sent different lengths".into()));
                }
                for (s, v) in sum.iter_mut().zip(slot) {
                    *s += v;
                }
            }
            round.result = sum;
            round.all = round.gathered.iter_mut().filter_map(Option::take).collect();
            round.generation += 1;
            self.shared.done.notify_all();
        } else {
            while round.generation == generation {
                round = self.shared.done.wait(round).map_err(poisoned)?;
            }
        }
        Ok((round.result.clone(), round.all.clone()))
    }
}

impl Collective for ThreadRank {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.shared.world
    }
    fn all_reduce_f64(&self, values: &mut [f64]) -> Result<()> {
        let (sum, _) = self.exchange(values.to_vec(), Vec::new())?;
        values.copy_from_slice(&sum);
        Ok(())
    }
    fn all_reduce_f32(&self, values: &mut [f32]) -> Result<()> {
        let wide = values.iter().map(|&v| v as f64).collect();
        let (sum, _) = self.exchange(wide, Vec::new())?;
        for (v, s) in values.iter_mut().zip(sum) {
            *v = s as f32;
        }
        Ok(())
    }
    fn gather_f32(&self, values: &[f32]) -> Result<Option<Vec<Vec<f32>>>> {
        let (_, all) = self.exchange(Vec::new(), values.to_vec())?;
        Ok((self.rank == 0).then_some(all))
    }
    fn engine(&self) -> &str {
        "threads"
    }
}
