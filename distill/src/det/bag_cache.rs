//! The BARON bag cache: every training image's bags (sampled once by the proposals stage) with
//! the teacher's embeddings of each bag's enclosing crop and of its centre region.
//!
//! Parquet, one row per bag: `image_id` (i64), `cx1, cy1, cx2, cy2` (the centre, f32, image
//! pixels), `cells` (u32 bit mask of the grid cells kept), `overlap` (f32), `orders` (string:
//! permutations of the members as `"0,2,1;1,0,2"`), `t0 … t{D-1}` (the teacher's embedding of
//! the enclosing crop) and `s0 … s{D-1}` (its ViLD embedding of the centre region). The member
//! boxes follow from the centre, the cells and the overlap ([`super::bags::grid_box`]).
//!
//! Precomputed rather than online: on two CPU cores the teacher's crops cost more than the
//! detector's step, and a training run visits each image many times (the quick preset's 200
//! steps of 4 images are 12 epochs of 64 images), so paying for each bag once keeps training
//! as fast as ViLD's. The price: the bags of an image are fixed (several per region, drawn per
//! step), where the paper resamples them from the student's own proposals every iteration.

use std::collections::BTreeMap;
use std::path::Path;

use polars::prelude::*;

use super::DetError;
use super::bags::Bag;

/// One cached bag with its teacher embeddings.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedBag {
    /// The bag (members in the original image's pixels).
    pub bag: Bag,
    /// The teacher's L2-normalised embedding of the enclosing crop `[D]`.
    pub teacher_bag: Vec<f32>,
    /// The teacher's L2-normalised region embedding of the centre `[D]`.
    pub teacher_center: Vec<f32>,
}

/// Bags of many images.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BagCache {
    /// Embedding size D.
    pub dim: usize,
    /// Image id → its bags.
    pub images: BTreeMap<i64, Vec<CachedBag>>,
}

fn cells_mask(cells: &[u8]) -> u32 {
    cells.iter().fold(0u32, |m, &c| m | (1 << c))
}

fn orders_string(orders: &[Vec<usize>]) -> String {
    orders
        .iter()
        .map(|o| {
            o.iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect::<Vec<_>>()
        .join(";")
}

impl BagCache {
    /// Number of bags.
    pub fn num_bags(&self) -> usize {
        self.images.values().map(Vec::len).sum()
    }

    /// Writes the Parquet file atomically.
    pub fn write_parquet(&self, path: &Path, overlap: f32) -> Result<(), DetError> {
        let e = |e: PolarsError| DetError::file(path, e.to_string());
        let mut ids = Vec::new();
        let mut c: [Vec<f32>; 4] = Default::default();
        let mut cells = Vec::new();
        let mut orders = Vec::new();
        let mut t: Vec<Vec<f32>> = vec![Vec::new(); self.dim];
        let mut s: Vec<Vec<f32>> = vec![Vec::new(); self.dim];
        for (&id, bags) in &self.images {
            for b in bags {
                ids.push(id);
                for k in 0..4 {
                    c[k].push(b.bag.center[k]);
                }
                cells.push(cells_mask(&b.bag.cells));
                orders.push(orders_string(&b.bag.orders));
                for k in 0..self.dim {
                    t[k].push(b.teacher_bag[k]);
                    s[k].push(b.teacher_center[k]);
                }
            }
        }
        let n = ids.len();
        let mut cols: Vec<Column> = vec![
            Column::new("image_id".into(), ids),
            Column::new("cx1".into(), &c[0]),
            Column::new("cy1".into(), &c[1]),
            Column::new("cx2".into(), &c[2]),
            Column::new("cy2".into(), &c[3]),
            Column::new("cells".into(), cells),
            Column::new("overlap".into(), vec![overlap; n]),
            Column::new("orders".into(), orders),
        ];
        for (k, v) in t.into_iter().enumerate() {
            cols.push(Column::new(format!("t{k}").into(), v));
        }
        for (k, v) in s.into_iter().enumerate() {
            cols.push(Column::new(format!("s{k}").into(), v));
        }
        let mut df = DataFrame::new(n, cols).map_err(e)?;
        let mut buf = Vec::new();
        ParquetWriter::new(&mut buf).finish(&mut df).map_err(e)?;
        ovkd_data::io::write_atomic(path, &buf).map_err(|err| DetError::file(path, err.to_string()))
    }

    /// Reads the Parquet file; a malformed row is an error naming the row and the column.
    pub fn read_parquet(path: &Path) -> Result<Self, DetError> {
        let f = std::fs::File::open(path).map_err(|e| DetError::file(path, e.to_string()))?;
        let df = ParquetReader::new(f)
            .finish()
            .map_err(|e| DetError::file(path, format!("not a Parquet file: {e}")))?;
        let col = |name: &str, dt: DataType| -> Result<Column, DetError> {
            df.column(name)
                .map_err(|_| DetError::file(path, format!("no column `{name}`")))?
                .cast(&dt)
                .map_err(|e| DetError::file(path, format!("column `{name}`: {e}")))
        };
        let f32s = |name: &str| -> Result<Vec<Option<f32>>, DetError> {
            let c = col(name, DataType::Float32)?;
            let ca = c
                .f32()
                .map_err(|e| DetError::file(path, format!("column `{name}`: {e}")))?;
            Ok((0..ca.len()).map(|i| ca.get(i)).collect())
        };
        let ids_col = col("image_id", DataType::Int64)?;
        let ids = ids_col
            .i64()
            .map_err(|e| DetError::file(path, format!("column `image_id`: {e}")))?;
        let ids: Vec<Option<i64>> = (0..ids.len()).map(|i| ids.get(i)).collect();
        let cells_col = col("cells", DataType::UInt32)?;
        let cells = cells_col
            .u32()
            .map_err(|e| DetError::file(path, format!("column `cells`: {e}")))?;
        let cells: Vec<Option<u32>> = (0..cells.len()).map(|i| cells.get(i)).collect();
        let orders_col = col("orders", DataType::String)?;
        let orders = orders_col
            .str()
            .map_err(|e| DetError::file(path, format!("column `orders`: {e}")))?;
        let orders: Vec<Option<&str>> = (0..orders.len()).map(|i| orders.get(i)).collect();
        let centre = [f32s("cx1")?, f32s("cy1")?, f32s("cx2")?, f32s("cy2")?];
        let overlap = f32s("overlap")?;
        let mut dim = 0;
        while df.column(&format!("t{dim}")).is_ok() {
            dim += 1;
        }
        let t: Vec<Vec<Option<f32>>> = (0..dim)
            .map(|k| f32s(&format!("t{k}")))
            .collect::<Result<_, _>>()?;
        let s: Vec<Vec<Option<f32>>> = (0..dim)
            .map(|k| f32s(&format!("s{k}")))
            .collect::<Result<_, _>>()?;
        let mut out = Self {
            dim,
            images: BTreeMap::new(),
        };
        for i in 0..df.height() {
            let bad = |what: &str| DetError::file(path, format!("row {i}: {what}"));
            let id = ids[i].ok_or_else(|| bad("`image_id` is null"))?;
            let mut c = [0f32; 4];
            for k in 0..4 {
                c[k] = centre[k][i]
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| bad("a centre coordinate is null or not finite"))?;
            }
            let mask = cells[i].ok_or_else(|| bad("`cells` is null"))?;
            let cell_list: Vec<u8> = (0..9u8).filter(|k| mask & (1 << k) != 0).collect();
            if !cell_list.contains(&4) {
                return Err(bad("`cells` lacks the centre cell 4"));
            }
            let ov = overlap[i].ok_or_else(|| bad("`overlap` is null"))?;
            let m = cell_list.len();
            let ords: Vec<Vec<usize>> = orders[i]
                .ok_or_else(|| bad("`orders` is null"))?
                .split(';')
                .map(|o| {
                    let p: Vec<usize> = o
                        .split(',')
                        .map(|x| x.trim().parse::<usize>())
                        .collect::<Result<_, _>>()
                        .map_err(|e| bad(&format!("`orders`: {e}")))?;
                    let mut sorted = p.clone();
                    sorted.sort_unstable();
                    if sorted != (0..m).collect::<Vec<_>>() {
                        return Err(bad(&format!(
                            "`orders`: {o:?} is not a permutation of 0..{m}"
                        )));
                    }
                    Ok(p)
                })
                .collect::<Result<_, _>>()?;
            let emb = |cols: &[Vec<Option<f32>>], name: &str| -> Result<Vec<f32>, DetError> {
                cols.iter()
                    .map(|c| c[i].filter(|v| v.is_finite()))
                    .collect::<Option<Vec<f32>>>()
                    .ok_or_else(|| bad(&format!("an `{name}` column is null or not finite")))
            };
            out.images.entry(id).or_default().push(CachedBag {
                bag: Bag::new(c, cell_list, ov, ords),
                teacher_bag: emb(&t, "t")?,
                teacher_center: emb(&s, "s")?,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parquet_round_trip_rebuilds_the_members() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bags.parquet");
        let bag = Bag::new(
            [10.0, 10.0, 20.0, 30.0],
            vec![1, 4, 5],
            0.1,
            vec![vec![0, 1, 2], vec![2, 0, 1]],
        );
        let mut cache = BagCache {
            dim: 2,
            ..Default::default()
        };
        cache.images.insert(
            5,
            vec![CachedBag {
                bag: bag.clone(),
                teacher_bag: vec![0.6, 0.8],
                teacher_center: vec![1.0, 0.0],
            }],
        );
        cache.write_parquet(&path, 0.1).unwrap();
        let back = BagCache::read_parquet(&path).unwrap();
        assert_eq!(back, cache);
        assert_eq!(back.images[&5][0].bag.members.len(), 3);
        assert_eq!(back.num_bags(), 1);
    }
}
