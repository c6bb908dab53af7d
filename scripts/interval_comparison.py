"""For each `aggregate` stage of an experiment that has run: the mean ± 2 SE over the runs
alone (how aggregate computed intervals before version 3) next to the interval it reports
now (clustered two ways, by run and by prompt, where the runs have per-prompt values).

    python3 scripts/interval_comparison.py pipelines/experiments/ppo.lock

Reads the lock, the spec beside it and the store (.hone/objects) of the workspace it is
run from; needs PyYAML. Prints Markdown rows per aggregate stage.
"""
import json, sys, math, yaml, statistics as st
from collections import defaultdict
import os
root = os.getcwd()
spec_lock, = sys.argv[1:2]
lock = yaml.safe_load(open(f'{root}/{spec_lock}'))
stages = lock['stages']
spec = yaml.safe_load(open(f'{root}/{spec_lock[:-5]}.yaml'))
def lookup(v, path):
    for k in path.split('.'):
        if v is None: return None
        v = v.get(k)
    return v
def aggs(node, out):
    for name, st_ in node.get('stages', {}).items():
        if 'stages' in st_: aggs(st_, out)
        elif st_.get('kind') == 'aggregate': out[name] = st_
    return out
for name, a in aggs(spec, {}).items():
    w = a['with']; runs_ref = a['inputs']['runs']
    refs = runs_ref if isinstance(runs_ref, list) else [runs_ref]
    wanted = {}
    for ref in refs:
        stage_ref, port = ref.rsplit('.', 1)
        wanted[stage_ref] = port
    cells = defaultdict(list)
    for sid, s in stages.items():
        port = wanted.get(sid) or wanted.get(sid.split('@')[0] + '@*')
        if port is None: continue
        d = s['outputs'][port]['digest']
        summ = json.load(open(f'{root}/.hone/objects/{d[:2]}/{d}/summary.json'))
        key = (lookup(summ, w['panel']) if w.get('panel') else '',
               lookup(summ, w['series']) if w.get('series') else '', lookup(summ, w['x']))
        cells[key].append(lookup(summ, w['y']))
    new = {}
    d = lock['stages'][name]['outputs']['report']['digest']
    for line in open(f'{root}/.hone/objects/{d[:2]}/{d}/table.md'):
        parts = [p.strip() for p in line.split('|')]
        if len(parts) > 5 and '±' in parts[5]:
            new[(parts[1], parts[2], parts[3])] = (parts[4], parts[5])
    print(f'## {spec_lock} {name}: {w["y"]}')
    for (panel, series, x), ys in cells.items():
        m = st.mean(ys); se = st.stdev(ys)/math.sqrt(len(ys)) if len(ys) > 1 else float('nan')
        xs = f'{x:.0f}' if float(x).is_integer() else f'{x}'
        n = new.get((str(panel), str(series), xs), ('?', '?'))
        print(f'| {panel} | {series} | {xs} | over runs {m:.3f} ± {2*se:.3f} | two-way {n[1]} ({n[0]}) |')
