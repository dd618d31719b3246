"""BM25 tokenizers on a Chinese catalog: cost (index build, query) and whether queries match.

A synthetic catalog of ``--items`` Chinese e-commerce titles (brand, attributes, product,
spec, colour; some brands in Latin letters; parts joined with or without spaces, as real
titles are) is indexed by :class:`llmrecall.lexical.BM25Index` with each tokenizer:
``plain`` (bm25s' tokenizer, the behaviour before Chinese segmentation), ``jieba`` and
``bigram``. Queries are a brand or an attribute followed by a product written without a
space (华为蓝牙耳机, 无线吸尘器); a returned item is relevant when its title contains both
parts. Reported per tokenizer:

* build s: tokenizing and indexing all titles (jieba's one-off dictionary load, ~0.5 s, is
  excluded: it is paid once per process and shown separately);
* tokens/title, vocabulary size;
* batch ms/query: ``search(queries, k=10)`` over all queries at once, per query;
* single ms/query: ``scores(query)``, one query at a time (the service's query recall);
* answered: share of queries with at least one match; R@10: relevant items among the ten
  returned over min(10, relevant items in the catalog); hit@1: the first item is relevant.

An English control (``--english``) times ``plain`` against ``auto`` on English titles, the
cost of looking for Han characters.

    PYTHONPATH=src python bench/lexical_tokenizers.py [--items 20000] [--queries 1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from llmrecall import lexical
from llmrecall.lexical import BM25Index

BRANDS = [("华为", "HUAWEI"), ("小米", "Xiaomi"), ("苹果", "Apple"), ("联想", "Lenovo"),
          ("美的", "Midea"), ("格力", ""), ("海尔", "Haier"), ("耐克", "Nike"),
          ("阿迪达斯", "adidas"), ("李宁", ""), ("安踏", ""), ("优衣库", "UNIQLO"),
          ("三只松鼠", ""), ("良品铺子", ""), ("兰蔻", "Lancome"), ("欧莱雅", "L'Oreal"),
          ("索尼", "Sony"), ("戴森", "Dyson"), ("九阳", "Joyoung"), ("苏泊尔", "SUPOR"),
          ("罗技", "Logitech"), ("漫步者", "EDIFIER"), ("佳能", "Canon"), ("飞利浦", "Philips")]
PRODUCTS = ["蓝牙耳机", "降噪耳机", "智能手表", "手机", "平板电脑", "充电宝", "数据线", "蓝牙音箱",
            "机械键盘", "无线鼠标", "笔记本电脑", "显示器", "电饭煲", "空气炸锅", "扫地机器人",
            "吸尘器", "电热水壶", "破壁机", "空气净化器", "加湿器", "电风扇", "洗衣机", "连衣裙",
            "T恤", "牛仔裤", "羽绒服", "卫衣", "衬衫", "运动鞋", "跑步鞋", "帆布鞋", "双肩包",
            "坚果礼盒", "普洱茶", "绿茶", "咖啡豆", "牛肉干", "饼干", "蜂蜜", "精华液", "面霜",
            "防晒霜", "口红", "洗面奶", "面膜", "保温杯", "瑜伽垫", "电动牙刷", "剃须刀", "相机"]
ATTRIBUTES = ["无线", "便携", "大容量", "超薄", "轻薄", "防水", "新款", "2024新款", "男士", "女士",
              "儿童", "家用", "智能", "静音", "高清", "加厚", "夏季", "冬季", "透气", "防滑",
              "专业", "迷你", "多功能", "正品", "旗舰", "官方", "商务", "学生", "户外", "速干"]
SPECS = ["128GB", "256GB", "5G", "4L", "500ml", "1.5米", "XL码", "750g", "10000mAh", "65W",
         "27英寸", "3D", "1kg", "礼盒装", "套装", "两件套"]
COLOURS = ["黑色", "白色", "红色", "蓝色", "粉色", "灰色", "绿色", "金色", "银色", "米白色"]
EN_WORDS = ["wireless", "bluetooth", "headphones", "noise", "cancelling", "smart", "watch",
            "phone", "tablet", "laptop", "keyboard", "mouse", "monitor", "rice", "cooker", "air",
            "fryer", "robot", "vacuum", "kettle", "blender", "purifier", "humidifier", "fan",
            "washer", "dress", "shirt", "jeans", "jacket", "hoodie", "sneakers", "running",
            "shoes", "backpack", "nuts", "tea", "coffee", "beans", "honey", "serum", "cream",
            "sunscreen", "lipstick", "cleanser", "mask", "bottle", "yoga", "mat", "toothbrush",
            "shaver", "camera", "portable", "slim", "waterproof", "new", "men", "women", "kids",
            "home", "quiet", "black", "white", "red", "blue", "pink", "grey"]


def synthetic_titles(n: int, rng: np.random.Generator) -> list[str]:
    titles = []
    for _ in range(n):
        cn, en = BRANDS[rng.integers(len(BRANDS))]
        parts = [cn + (" " + en if en and rng.random() < 0.5 else "")]
        attrs = rng.choice(ATTRIBUTES, size=rng.integers(1, 4), replace=False)
        parts += list(attrs) + [PRODUCTS[rng.integers(len(PRODUCTS))]]
        if rng.random() < 0.6:
            parts.append(SPECS[rng.integers(len(SPECS))])
        if rng.random() < 0.6:
            parts.append(COLOURS[rng.integers(len(COLOURS))])
        # real titles join some parts with spaces and run others together
        title = parts[0]
        for part in parts[1:]:
            title += (" " if rng.random() < 0.4 else "") + part
        titles.append(title)
    return titles


def queries_of(titles: list[str], n: int, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """(query, first part, product): brand or attribute + product, both from one title."""
    out = []
    for i in rng.choice(len(titles), size=n, replace=False):
        title = titles[i]
        product = next(p for p in PRODUCTS if p in title)
        if rng.random() < 0.5:
            first = next(cn for cn, _ in BRANDS if title.startswith(cn))
        else:
            first = next(a for a in ATTRIBUTES if a in title)
        out.append((first + product, first, product))
    return out


def measure(titles: list[str], queries: list[tuple[str, str, str]], tokenizer: str,
            single: int) -> dict:
    t = time.perf_counter()
    index = BM25Index(titles, tokenizer=tokenizer)
    build = time.perf_counter() - t
    words = index.words(titles[:2000])
    texts = [q for q, _, _ in queries]
    t = time.perf_counter()
    ids, _ = index.search(texts, 10)
    batch = (time.perf_counter() - t) / len(texts)
    t = time.perf_counter()
    for q in texts[:single]:
        index.scores(q)
    one = (time.perf_counter() - t) / single
    relevant = np.array([[j >= 0 and a in titles[j] and p in titles[j] for j in row]
                         for row, (_, a, p) in zip(ids, queries)])
    # relevant items in the whole catalog (at least the title the query was drawn from)
    total = np.array([sum(a in t and p in t for t in titles) for _, a, p in queries])
    return {"build_s": build, "tokens": np.mean([len(w) for w in words]),
            "vocab": len(index._vocab), "batch_ms": batch * 1e3, "single_ms": one * 1e3,
            "answered": float((ids[:, 0] >= 0).mean()),
            "r10": float((relevant.sum(axis=1) / np.minimum(total, 10)).mean()),
            "hit1": float(relevant[:, 0].mean())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--single", type=int, default=200, help="queries timed one by one")
    parser.add_argument("--english", action="store_true", help="also time English titles")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    titles = synthetic_titles(args.items, rng)
    queries = queries_of(titles, args.queries, rng)
    t = time.perf_counter()
    lexical._jieba_tokenizer()
    print(f"jieba dictionary load: {time.perf_counter() - t:.2f} s (once per process)")
    print(f"{args.items:,} titles, e.g. {titles[0]!r}; {args.queries:,} queries, "
          f"e.g. {queries[0][0]!r}")
    print("| tokenizer | build s | tokens/title | vocabulary | batch ms/query | "
          "single ms/query | answered | R@10 | hit@1 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in ("plain", "jieba", "bigram"):
        r = measure(titles, queries, name, args.single)
        print(f"| `{name}` | {r['build_s']:.2f} | {r['tokens']:.1f} | {r['vocab']:,} | "
              f"{r['batch_ms']:.3f} | {r['single_ms']:.3f} | {r['answered']:.3f} | "
              f"{r['r10']:.3f} | {r['hit1']:.3f} |")
    if args.english:
        en = [" ".join(rng.choice(EN_WORDS, size=rng.integers(4, 9))) for _ in range(args.items)]
        for name in ("plain", "auto"):
            t = time.perf_counter()
            BM25Index(en, tokenizer=name)
            print(f"English titles, `{name}`: build {time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
    main()
