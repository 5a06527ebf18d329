"""InstanceNorm computed as torch.group_norm with one group per channel: a lead, not used by the library.

Two one-off measurements quoted in benchmarks/results/cpu_overhead_turn8.md (AMD EPYC, 2 CPUs, AVX2, torch
2.13.0+cpu, 1 thread): fwd+bwd time of torch.instance_norm, torch.group_norm(G=C) and native_batch_norm on
the (1, N*C, L) view (best of 7 x 2,000 calls), then the max error of instance_norm and group_norm against
a float64 oracle over 300 random shapes, means 0/100/1e4, scales 1e-3/1/30, four dtype pairs.

    python benchmarks/instance_via_group_norm.py
"""
import torch, time
torch.set_num_threads(1)
def bench(f, n=2000):
    best=1e9
    for _ in range(7):
        s=time.perf_counter()
        for _ in range(n): f()
        best=min(best,(time.perf_counter()-s)/n)
    return best*1e6
for shape in [(2,64,4,4),(2,16,16,16),(8,64,8,8)]:
    N,C=shape[:2]
    x=torch.randn(*shape, requires_grad=True); w=torch.ones(C,requires_grad=True); b=torch.zeros(C,requires_grad=True)
    g=torch.randn(*shape)
    def inorm():
        y=torch.instance_norm(x,w,b,None,None,True,0.0,1e-5,False); y.backward(g)
    def gnorm():
        y=torch.group_norm(x,C,w,b,1e-5,False); y.backward(g)
    def nbn():
        y=torch.native_batch_norm(x.reshape(1,N*C,-1), w.repeat(N), b.repeat(N), None,None,True,0.0,1e-5)[0].view_as(x); y.backward(g)
    for f in (inorm,gnorm,nbn): bench(f,300)
    print(shape, "instance_norm %.1f  group_norm(G=C) %.1f  native_bn %.1f" % (bench(inorm), bench(gnorm), bench(nbn)))
    ya=torch.instance_norm(x,w,b,None,None,True,0.0,1e-5,False); yb=torch.group_norm(x,C,w,b,1e-5,False)
    print("  max diff", (ya-yb).abs().max().item())


torch.manual_seed(0)
def ref(x, w, b, eps):
    xd=x.double(); dims=tuple(range(2,x.ndim))
    m=xd.mean(dims,keepdim=True); v=xd.var(dims,unbiased=False,keepdim=True)
    sh=(1,-1)+(1,)*(x.ndim-2)
    return (xd-m)/torch.sqrt(v+eps)*w.double().view(sh)+b.double().view(sh)
worst={}
for trial in range(300):
    N=int(torch.randint(1,5,()));C=int(torch.randint(1,9,()));sp=[int(torch.randint(1,7,())) for _ in range(int(torch.randint(1,4,())))]
    if torch.tensor(sp).prod()<2: continue
    mean=float([0,100,1e4][trial%3]); scale=float([1e-3,1,30][(trial//3)%3])
    for dt,pdt in [(torch.float32,torch.float32),(torch.bfloat16,torch.float32),(torch.float16,torch.float16),(torch.bfloat16,torch.bfloat16)]:
        x=(torch.randn(N,C,*sp)*scale+mean).to(dt)
        w=(torch.rand(C)+0.5).to(pdt); b=torch.randn(C).to(pdt)
        ex=ref(x.float(),w,b,1e-5)
        try:
            yi=torch.instance_norm(x,w,b,None,None,True,0.0,1e-5,False)
        except Exception as e: yi=None
        try:
            yg=torch.group_norm(x,C,w,b,1e-5,False)
        except Exception as e: print('gn err',dt,pdt,e); continue
        ei=(yi.double()-ex).abs().max().item() if yi is not None else float('nan'); eg=(yg.double()-ex).abs().max().item()
        k=(str(dt),str(pdt),mean)
        wi,wg=worst.get(k,(0,0)); worst[k]=(max(wi,ei),max(wg,eg))
for k,v in sorted(worst.items()): print(k, "instance_norm %.2e group_norm %.2e"%v)
