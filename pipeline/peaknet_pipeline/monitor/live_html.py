"""The live page itself: one HTML document with its CSS and JS inline (no network, no CDN:
it works through kubectl port-forward on a beamline laptop). It polls the JSON endpoints
once a second (monitor/live_server.py) and draws on canvases; nothing reloads. Each panel
sets `data-filled` once it has drawn data, and the newest-hit image `data-hit` (its id) and
`data-loaded`, so a headless browser test can read the page's state from its DOM.
"""

from __future__ import annotations

_CSS = """
*{box-sizing:border-box}body{margin:0;background:#10151b;color:#d9e0e8;
font:13px/1.35 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:6px 18px;padding:8px 14px;
background:#171e26;border-bottom:1px solid #263140}
header h1{font-size:15px;margin:0;font-weight:600}.muted{color:#8796a8}
.badge{padding:1px 8px;border-radius:9px;font-weight:600;background:#2a3644}
.st-streaming{background:#1f6f43}.st-draining{background:#8a6d1d}.st-ended{background:#444f5c}
.st-starting{background:#2c4f7c}.lost{background:#8c2f2f!important}
.v-ok{color:#5fd38d}.v-starved{color:#e7c35a}.v-backlogged,.v-writer-bound,.v-spilling{color:#ff7b6b}
#sentence{flex-basis:100%;color:#aab6c4;font-size:12px}
.kpis{display:grid;grid-template-columns:repeat(auto-fit,minmax(128px,1fr));gap:8px;padding:10px 14px}
.kpi{background:#171e26;border:1px solid #263140;border-radius:6px;padding:6px 10px}
.kpi b{display:block;font-size:20px;white-space:nowrap;font-variant-numeric:tabular-nums;color:#fff}
.kpi span{font-size:11px;color:#8796a8;text-transform:uppercase;letter-spacing:.04em}
main{display:grid;grid-template-columns:repeat(auto-fit,minmax(430px,1fr));gap:10px;padding:0 14px 14px}
section{background:#171e26;border:1px solid #263140;border-radius:6px;padding:8px 10px;min-width:0}
section h2{font-size:12px;margin:0 0 6px;color:#9fb3c8;text-transform:uppercase;letter-spacing:.05em}
canvas{width:100%;display:block}
.hitbox{display:grid;grid-template-columns:1fr 96px;gap:8px}
#big{width:100%;image-rendering:pixelated;background:#000;border-radius:3px;min-height:120px}
.thumbs img{width:96px;height:auto;display:block;margin-bottom:5px;cursor:pointer;
border:2px solid transparent;image-rendering:pixelated;background:#000}
.thumbs img.sel{border-color:#00e6ff}
.controls{display:flex;gap:10px;align-items:center;flex-wrap:wrap;margin-top:6px;font-size:12px}
.controls input[type=range]{width:110px}
#powder{width:100%;image-rendering:pixelated;background:#000;border-radius:3px}
.pw{position:relative}#beam{position:absolute;left:0;top:0;width:100%;height:100%;pointer-events:none}
table{border-collapse:collapse;width:100%}td{padding:2px 4px;border-bottom:1px solid #222c38}
td:first-child{color:#8796a8;width:42%}.bar{height:9px;background:#263140;border-radius:4px;overflow:hidden}
.bar i{display:block;height:100%;background:#3d8bfd}
#banner{display:none;padding:6px 14px;background:#8c2f2f;color:#fff}
"""

_BODY = """
<header><h1>PeakNet live</h1><span id="run" class="muted">-</span>
<span id="state" class="badge">connecting</span><span>DAQ run <b id="daq">-</b></span>
<span class="muted">elapsed <b id="elapsed">-</b></span>
<span>verdict <b id="verdict">-</b></span><span id="sentence"></span></header>
<div id="banner"></div>
<div class="kpis">
<div class="kpi"><span>hit rate (last min)</span><b id="k-hitrate">-</b></div>
<div class="kpi"><span>hit rate (run)</span><b id="k-hitrun">-</b></div>
<div class="kpi"><span>frames/s in</span><b id="k-in">-</b></div>
<div class="kpi"><span>frames/s written</span><b id="k-out">-</b></div>
<div class="kpi"><span>written / hits</span><b id="k-written">-</b></div>
<div class="kpi"><span>latency median / p95</span><b id="k-lat">-</b></div>
<div class="kpi"><span>latency max (1 min)</span><b id="k-latmax">-</b></div>
<div class="kpi"><span>newest frame age</span><b id="k-age">-</b></div>
</div>
<main>
<section id="p-hits"><h2>Newest hits <span id="hitinfo" class="muted"></span></h2>
<div class="hitbox"><img id="big" alt="newest hit"><div class="thumbs" id="thumbs"></div></div>
<div class="controls">range <input id="lo" type="range" min="0" max="50" step="0.5" value="1">
<span id="lov">1</span>% &ndash; <input id="hi" type="range" min="50" max="100" step="0.1" value="99.5">
<span id="hiv">99.5</span>% <select id="cmap"><option>inferno</option><option>grey</option></select>
<label><input id="follow" type="checkbox" checked> follow newest</label></div></section>
<section id="p-rate"><h2>Hit rate <span id="thr" class="muted"></span></h2>
<canvas id="c-rate" height="150"></canvas><h2 style="margin-top:8px">Frames per second
<span class="muted">&mdash; <span style="color:#3d8bfd">in</span> /
<span style="color:#5fd38d">written</span></span></h2><canvas id="c-fps" height="120"></canvas></section>
<section id="p-powder"><h2>Virtual powder pattern <span id="pinfo" class="muted"></span></h2>
<div class="pw"><img id="powder" alt="virtual powder pattern"><canvas id="beam"></canvas></div></section>
<section id="p-peaks"><h2>Peaks per frame <span id="hinfo" class="muted"></span></h2>
<canvas id="c-hist" height="140"></canvas><h2 style="margin-top:8px">Peakogram
<span class="muted">&mdash; log10 intensity against radius from the beam (px)</span></h2>
<canvas id="c-pgram" height="170"></canvas></section>
<section id="p-health"><h2>Health</h2><table id="health"></table></section>
</main>
"""

_JS = r"""
const $=id=>document.getElementById(id);
const f1=(x,d=1)=>x==null?'-':Number(x).toFixed(d), pct=x=>x==null?'-':(100*x).toFixed(1)+'%';
const sec=x=>x==null?'-':(x<1?(1000*x).toFixed(0)+' ms':x.toFixed(2)+' s');
const hms=t=>{t=Math.max(0,t|0);return [t/3600|0,(t/60|0)%60,t%60].map(v=>String(v).padStart(2,'0')).join(':')};
let S={summary:null,hits:[],sel:null,shown:null,tick:0,fails:0};
function canvas(c){const r=window.devicePixelRatio||1,w=c.clientWidth||400,h=c.height/(c._r||1);
 c._r=r;c.width=w*r;c.height=h*r;const g=c.getContext('2d');g.scale(r,r);
 g.font='11px system-ui';g.fillStyle='#10151b';g.fillRect(0,0,w,h);return [g,w,h]}
function axes(g,w,h,L,B,ymax,yfmt){g.strokeStyle='#2a3644';g.fillStyle='#8796a8';
 for(let i=0;i<=4;i++){const y=h-B-(h-B-8)*i/4;g.beginPath();g.moveTo(L,y);g.lineTo(w-4,y);g.stroke();
 g.fillText(yfmt(ymax*i/4),2,y+4)}}
function lines(c,t,sets,ymax,yfmt,mark){const [g,w,h]=canvas(c),L=44,B=16;
 axes(g,w,h,L,B,ymax,yfmt);if(t.length<1)return false;const t0=t[0],t1=Math.max(t[t.length-1],t0+1);
 const X=v=>L+(w-L-6)*(v-t0)/(t1-t0),Y=v=>h-B-(h-B-8)*Math.min(v,ymax)/ymax;
 g.fillText('-'+hms(t1-t0),L,h-3);g.fillText('now',w-28,h-3);
 for(const [vals,col] of sets){g.strokeStyle=col;g.lineWidth=1.6;g.beginPath();let on=false;
  vals.forEach((v,i)=>{if(v==null){on=false;return}on?g.lineTo(X(t[i]),Y(v)):g.moveTo(X(t[i]),Y(v));on=true});g.stroke()}
 if(mark){g.fillStyle='#c6d0dc';g.fillText(mark,L+4,14)}return true}
function nice(m){if(m<=0)return 1;const p=10**Math.floor(Math.log10(m));return [1,2,5,10].map(k=>k*p).find(v=>v>=m)}
function drawSeries(s){const sr=s.hit_rate.filter(v=>v!=null),top=Math.min(1,nice(Math.max(0.05,...sr)*1.1));
 const a=lines($('c-rate'),s.t,[[s.hit_rate,'#ffb347']],top,v=>(100*v).toFixed(0)+'%');
 const fm=nice(Math.max(1,...s.in_fps,...s.written_fps)*1.1);
 lines($('c-fps'),s.t,[[s.in_fps,'#3d8bfd'],[s.written_fps,'#5fd38d']],fm,v=>v.toFixed(0));
 $('thr').textContent='a hit: at least '+s.min_peaks+' peaks';if(a&&s.t.length>1)$('p-rate').dataset.filled=1}
function drawPeaks(p){if(!p.per_frame||!p.per_frame.length)return;const h=p.per_frame,[g,w,H]=canvas($('c-hist'));
 const L=44,B=16,n=h.length,m=nice(Math.max(1,...h)),bw=(w-L-6)/n;axes(g,w,H,L,B,m,v=>v.toFixed(0));
 h.forEach((v,i)=>{g.fillStyle=i>=p.min_peaks?'#ffb347':'#56708c';const y=(H-B-8)*v/m;g.fillRect(L+i*bw,H-B-y,Math.max(1,bw-1),y)});
 g.fillStyle='#8796a8';for(let i=0;i<n;i+=8)g.fillText(i==n-1?i+'+':i,L+i*bw,H-3);g.fillText((n-1)+'+',w-22,H-3);
 g.strokeStyle='#fff';g.setLineDash([4,3]);const x=L+p.min_peaks*bw;g.beginPath();g.moveTo(x,8);g.lineTo(x,H-B);g.stroke();g.setLineDash([]);
 $('hinfo').textContent=p.frames+' frames, '+p.hits+' hits'+(p.daq_run?' in '+p.daq_run:'');
 const k=p.peakogram,[q,W2,H2]=canvas($('c-pgram')),R=k.counts.length,I=k.counts[0].length,L2=34,B2=16;
 let mx=0;k.counts.forEach(r=>r.forEach(v=>mx=Math.max(mx,v)));const cw=(W2-L2-4)/R,ch=(H2-B2-4)/I;
 for(let r=0;r<R;r++)for(let i=0;i<I;i++){const v=k.counts[r][i];if(!v)continue;const z=Math.log1p(v)/Math.log1p(mx);
  q.fillStyle=`hsl(${260-220*z},85%,${22+48*z}%)`;q.fillRect(L2+r*cw,H2-B2-(i+1)*ch,cw+.5,ch+.5)}
 q.fillStyle='#8796a8';const [l0,l1]=k.log10_intensity;for(let d=l0;d<=l1;d+=2)q.fillText('1e'+d,2,H2-B2-(d-l0)/(l1-l0)*(H2-B2-4)+4);
 for(let j=0;j<=4;j++)q.fillText((k.radius_px[1]*j/4).toFixed(0),L2+(W2-L2-20)*j/4,H2-3);
 if(p.frames>0)$('p-peaks').dataset.filled=1}
function drawPowder(p){if(!p.counts)return;const img=$('powder');img.onload=()=>{const c=$('beam'),w=img.clientWidth,h=img.clientHeight;
 c.width=w;c.height=h;const g=c.getContext('2d'),s=w/p.counts[0].length/p.powder_cell_px;
 const x=-p.powder_origin_px[0]*s,y=-p.powder_origin_px[1]*s;g.strokeStyle='#00e6ff';g.lineWidth=1;
 g.beginPath();g.moveTo(x-7,y);g.lineTo(x+7,y);g.moveTo(x,y-7);g.lineTo(x,y+7);g.stroke();$('p-powder').dataset.filled=1};
 const u='/powder.png?cmap='+$('cmap').value+'&v='+p.peaks;if(img.dataset.src!==u){img.src=img.dataset.src=u}else if(img.complete&&img.naturalWidth)img.onload();$('pinfo').textContent=p.peaks+' peaks, cell '+p.powder_cell_px+' px; + beam centre'}
function hitUrl(h,max){return h.image+'?lo='+$('lo').value+'&hi='+$('hi').value+'&cmap='+$('cmap').value+(max?'&max='+max:'')}
function showBig(){const h=S.hits.find(x=>x.id===S.sel);if(!h)return;const big=$('big');
 if(big.dataset.src!==hitUrl(h)){big.dataset.loaded=0;big.onload=()=>{big.dataset.loaded=big.naturalWidth>0?1:0;big.dataset.hit=h.id;$('p-hits').dataset.filled=1};
  big.src=big.dataset.src=hitUrl(h)}
 $('hitinfo').textContent='event '+h.event_id+' ('+h.source_id+') at '+new Date(h.t*1000).toLocaleTimeString()+', '+h.npeaks+' peaks'+(h.daq_run?', '+h.daq_run:'');
 [...$('thumbs').children].forEach(im=>im.classList.toggle('sel',+im.dataset.id===S.sel))}
function drawHits(hits){S.hits=hits;if(!hits.length)return;
 if($('follow').checked||!hits.some(h=>h.id===S.sel))S.sel=hits[0].id;
 const th=$('thumbs'),ids=hits.slice(0,5).map(h=>h.id).join();if(th.dataset.ids!==ids){th.innerHTML='';th.dataset.ids=ids;
  hits.slice(0,5).forEach(h=>{const im=document.createElement('img');im.src=hitUrl(h,256);im.dataset.id=h.id;
  im.title='event '+h.event_id;im.onclick=()=>{$('follow').checked=false;S.sel=h.id;showBig()};th.appendChild(im)})}
 showBig()}
function row(k,v){return '<tr><td>'+k+'</td><td>'+v+'</td></tr>'}
function bar(x){return '<div class="bar"><i style="width:'+(100*Math.min(1,x||0)).toFixed(0)+'%"></i></div>'}
function drawHealth(h){let s='';for(const [n,q] of Object.entries(h.queues||{}))s+=row(n+' fill',bar(q.fill)+q.depth+' / '+q.capacity_items+' items');
 const v=h.verdict;s+=row('verdict',v?'<b class="v-'+v.word+'">'+v.word+'</b> <span class="muted">(why: at the top)</span>':'not judged yet');
 const i=h.inference||{};s+=row('inference busy',bar(i.busy)+pct(i.busy)+' on '+(i.device||'-')+(i.gpu_util!=null?', GPU util '+pct(i.gpu_util):''));
 const p=h.pool||{};s+=row('inference pool','desired '+(p.desired??'-')+', running '+(p.running??'-')+', starting '+(p.starting??0)+', retiring '+(p.retiring??0));
 s+=row('restarts',h.restarts+(h.restarts?' ('+h.restarts_recovered+' recovered)':''));const l=h.lost||{};
 const lost=Object.values(l).reduce((a,b)=>a+b,0);s+=row('frames lost',lost?'<b style="color:#ff7b6b">'+Object.entries(l).filter(e=>e[1]).map(e=>e[0]+' '+e[1]).join(', ')+'</b>':'none');
 $('health').innerHTML=s;$('p-health').dataset.filled=1}
function drawSummary(s){S.summary=s;$('run').textContent=s.run_id;const st=$('state');st.textContent=s.state;st.className='badge st-'+s.state;
 document.body.dataset.state=s.state;$('daq').textContent=s.daq_run||'whole run';$('elapsed').textContent=hms(s.elapsed_s);
 const v=s.verdict;$('verdict').textContent=v?v.word:'-';$('verdict').className=v?'v-'+v.word:'';$('sentence').textContent=v?v.sentence:'';
 $('k-hitrun').textContent=pct(s.hit_rate);$('k-in').textContent=f1(s.fps.in);$('k-out').textContent=f1(s.fps.written);
 $('k-written').textContent=s.frames.written+' / '+s.hits;const m=s.latency.last_minute;$('k-lat').textContent=sec(m.median_s)+' / '+sec(m.p95_s);
 $('k-latmax').textContent=sec(m.max_s);$('k-age').textContent=s.newest_frame_age_s==null?'-':f1(s.newest_frame_age_s)+' s'}
async function get(u){const r=await fetch(u,{cache:'no-store'});if(!r.ok)throw new Error(u+' '+r.status);return r.json()}
async function poll(){S.tick++;try{const [s,se,h,hi]=await Promise.all(['/api/summary','/api/series','/api/health','/api/hits'].map(get));
 drawSummary(s);drawSeries(se);drawHealth(h);drawHits(hi);$('k-hitrate').textContent=pct(s.hit_rate_last_minute);
 if(S.tick%2==1||s.state==='ended'){const [p,pw]=await Promise.all([get('/api/peaks'),get('/api/powder')]);drawPeaks(p);drawPowder(pw)}
 S.fails=0;$('banner').style.display='none';document.body.dataset.updates=S.tick}
 catch(e){S.fails++;const b=$('banner');b.style.display='block';b.textContent=(S.summary&&S.summary.state==='ended'?'The run has ended and its page server has stopped; the last figures stay shown.':'No answer from the pipeline ('+e.message+'); retrying.')}
 setTimeout(poll,S.fails>5?5000:1000)}
['lo','hi','cmap'].forEach(id=>$(id).addEventListener('input',()=>{$('lov').textContent=$('lo').value;$('hiv').textContent=$('hi').value;
 $('thumbs').dataset.ids='';drawHits(S.hits)}));
poll();
"""

PAGE = (
    "<!doctype html><html lang=en><head><meta charset=utf-8>"
    '<meta name=viewport content="width=device-width,initial-scale=1">'
    "<title>PeakNet live</title><style>"
    + _CSS
    + "</style></head><body>"
    + _BODY
    + "<script>"
    + _JS
    + "</script></body></html>"
).encode()
