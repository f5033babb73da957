# The large cases of fastwn.bench (fp32, bf16) in the allocator mode this process was started
# in: run it under the environment fastwn.bench.ALLOCATORS gives each mode. Usage: MODE OUT.json
import json, sys, torch
from fastwn.bench import bench_case, format_aa, machine_info
mode = sys.argv[1]; out = sys.argv[2]
cases = [((4096, 4096), 0), ((4096, 4096), 1), ((11008, 4096), 0), ((64, 512, 512), 0)]
rows = []
for dt in (torch.float32, torch.bfloat16):
    for s, d in cases:
        r = bench_case(s, d, dt, 'cpu', 15, 3.0); r['alloc'] = mode; rows.append(r)
        print(f"{mode:7s} {str(s):14s} dim={d} {r['dtype']:9s} fwd x{r['fwd_speedup']:.2f} (A/A t/f {format_aa(r, 'fwd')}) {r['fwd_pct_copy']:.0f}% clone"
              f"  f+b x{r['fb_speedup']:.2f} (A/A t/f {format_aa(r, 'fb')}) {r['fb_pct_copy']:.0f}% of 5 passes", flush=True)
json.dump({'machine': machine_info(), 'rows': rows}, open(out, 'w'), indent=1)
