"""Pieces of the new fit on a scale.py work directory: streaming PCA, exact k-NN graph, umap-learn fit (seeded
one thread, then unseeded on every core) with its spectral init timed.  Usage: PYTHONPATH=. python benchmarks/fit_pieces.py [WORKDIR]"""
import sys, time, numpy as np, warnings
warnings.filterwarnings("ignore")
from dmd2report.store import Store
from dmd2report.embed import fit_reduction
from dmd2report.knn import knn
import umap, umap.spectral as sp
st = Store((sys.argv[1] if len(sys.argv) > 1 else "/tmp/fitscale/w50/work") + "/stores/real")
t=time.time(); emb = fit_reduction(lambda: st.iter_features("midblock"), 50, device="cpu", progress=False); print("pca", round(time.time()-t,1), flush=True)
red = emb.reduce_chunks(st.iter_features("midblock"), progress=False)
t=time.time(); d,i = knn(red, None, 14, exclude_self=True, device="cpu"); print("knn graph", round(time.time()-t,1), flush=True)
rows=np.arange(len(red))[:,None]; pk=(np.concatenate([rows,i],1).astype(np.int32), np.concatenate([np.zeros_like(rows,np.float32),d],1))
orig=sp.spectral_layout
def timed(*a, **k):
    t=time.time(); r=orig(*a, **k); print("  spectral", round(time.time()-t,1), flush=True); return r
import umap.umap_ as uu; uu.spectral_layout=timed
for seed in (0, None):
    t=time.time(); u=umap.UMAP(n_neighbors=15, random_state=seed, n_jobs=1 if seed is not None else -1, precomputed_knn=(pk[0].copy(), pk[1].copy())).fit(red)
    print("umap fit seed", seed, round(time.time()-t,1), flush=True)
