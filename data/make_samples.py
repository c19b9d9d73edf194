"""Write the sample data files committed under data/ (deterministic: same bytes on every run).

    python data/make_samples.py

Every text below was written for this project. Conversations are built from short topic threads
(question → reply pairs that follow each other); some conversations switch topic part-way, as real
chat logs do. The outputs:

- data/sample_chat.json            the official Baichuan2 format (64 conversations, Chinese and English)
- data/sample_system.json          ShareGPT variant with a `system` turn and user/assistant roles
- data/examples/openai.jsonl       OpenAI messages
- data/examples/alpaca.json        alpaca (instruction/input/output, with history and system)
- data/examples/sharegpt.jsonl     ShareGPT as JSON lines
- data/examples/sharegpt.parquet   the same records as the ShareGPT JSONL, in Parquet
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Each thread: a list of (user question, assistant reply), in order.
ZH_THREADS: list[list[tuple[str, str]]] = [
    [
        (
            "写一段关于气候变化对海洋生态影响的短文。",
            "气候变化正在深刻地改变海洋。海水温度升高使珊瑚与共生藻类的关系破裂，大面积白化随之出现；"
            "二氧化碳溶入海水后让海洋逐渐酸化，贝类和浮游生物更难形成碳酸钙外壳。许多鱼类为了寻找适宜的水温向两极迁移，"
            "沿海渔民的传统渔场因此变得空荡。保护海洋需要减少排放，也需要建立海洋保护区，给生态系统留出恢复的时间。",
        ),
        (
            "能再具体说说珊瑚白化是怎么发生的吗？",
            "珊瑚本身是透明的，它的颜色和大部分营养来自住在组织里的虫黄藻。当海水温度比夏季平均最高温度高出一到两摄氏度并持续数周时，"
            "虫黄藻的光合作用会产生有害的活性氧，珊瑚于是把它们排出体外，只剩下白色的骨骼。"
            "如果水温很快回落，虫黄藻还能重新进入珊瑚；如果高温持续太久，珊瑚就会因为饥饿而死亡。",
        ),
        (
            "普通人能做些什么？",
            "个人能做的事情其实不少：出行尽量选择公共交通，减少不必要的航班；少用一次性塑料制品，购物时自带袋子；"
            "吃海鲜时选择有可持续认证的产品，避开过度捕捞的品种；去海边潜水或旅行时使用对珊瑚友好的防晒霜，不触摸、不采集珊瑚。"
            "此外，支持海洋保护组织、向身边的人分享这些知识，也能慢慢改变更多人的习惯。",
        ),
    ],
    [
        (
            "我想自学Python，应该从哪里开始？",
            "建议先装好Python 3和一个顺手的编辑器，比如VS Code。第一周学习变量、数据类型、条件判断和循环，"
            "每学一个概念就写几行代码验证。第二周学习函数、列表、字典和文件读写，试着写一个统计文本词频的小程序。"
            "之后再接触模块、异常处理和面向对象。最重要的是每天动手写，遇到报错先读错误信息，再去搜索。",
        ),
        (
            "列表和元组有什么区别？",
            "两者都是有序的序列，可以用下标访问。主要区别在于列表是可变的，可以追加、删除、修改元素；元组一旦创建就不能修改。"
            "因为不可变，元组可以作为字典的键，也常用来表示一组固定的数据，比如坐标 (x, y)。"
            "写法上列表用方括号，元组用圆括号，只有一个元素的元组需要在后面加逗号，例如 (1,)。",
        ),
        (
            "帮我写一个函数，判断一个数是不是质数。",
            "可以这样写：\n\ndef is_prime(n):\n    if n < 2:\n        return False\n    i = 2\n"
            "    while i * i <= n:\n        if n % i == 0:\n            return False\n        i += 1\n    return True\n\n"
            "只需要检查到平方根为止，因为如果n有一个大于平方根的因数，必然还有一个小于平方根的因数。"
            "例如 is_prime(97) 返回 True，is_prime(91) 返回 False，因为 91 = 7 × 13。",
        ),
        (
            "如果要判断很多个数，有更快的方法吗？",
            "需要判断一个范围内的所有数时，可以用埃拉托斯特尼筛法。先建一个长度为n+1的布尔列表，全部标记为质数，"
            "然后从2开始，把每个质数的倍数都标记为合数。遍历到平方根即可结束，剩下仍被标记为质数的就是答案。"
            "这种方法的时间复杂度约为 O(n log log n)，比逐个试除快得多，一百万以内的质数在普通电脑上不到一秒就能算完。",
        ),
    ],
    [
        (
            "红烧肉怎么做才不腻？",
            "关键有三点。第一，选五花肉，切块后冷水下锅焯水，加姜片和料酒去腥，捞出后用温水洗净。"
            "第二，不放油或只放少许油，小火把肉块煸到表面微黄，让肥肉里的油脂析出，多余的油倒掉。"
            "第三，用冰糖炒糖色，加生抽、老抽和热水没过肉块，小火慢炖一小时左右，最后大火收汁。"
            "炖的时候放几块山楂或者一点香醋，也能解腻。",
        ),
        (
            "没有冰糖可以用白糖吗？",
            "可以，白糖也能炒糖色，只是要更注意火候。白糖颗粒细，融化得快，也更容易炒焦发苦。"
            "建议锅里先放一点油，开小火放白糖，用铲子不停地推动，等糖变成枣红色并冒起小泡时立刻下肉翻炒。"
            "冰糖做出来的颜色更亮，味道也更柔和，所以家里有条件的话还是推荐冰糖。",
        ),
        (
            "配什么菜比较好？",
            "红烧肉口味浓郁，适合搭配清爽的菜。可以炒一盘蒜蓉菜心或清炒荷兰豆，再做一个番茄蛋花汤或冬瓜排骨汤。"
            "如果想让红烧肉本身更丰富，可以在炖的后半段加入鹌鹑蛋、土豆或者泡发的干豆角，它们会吸收汤汁，非常下饭。",
        ),
    ],
    [
        (
            "国庆想去成都玩四天，帮我安排一下行程。",
            "第一天到达后去宽窄巷子和人民公园，在公园的茶馆喝盖碗茶，晚上去玉林路吃火锅。"
            "第二天一早去大熊猫繁育研究基地，熊猫上午最活跃，下午逛武侯祠和锦里。"
            "第三天去都江堰和青城山，一天来回，建议坐高铁。第四天上午逛杜甫草堂或者四川博物院，下午买些特产返程。"
            "国庆人多，熊猫基地和景区门票最好提前几天在网上预约。",
        ),
        (
            "有哪些必吃的小吃？",
            "成都的小吃非常多，推荐这几样：钟水饺，甜中带辣；龙抄手，皮薄馅嫩；担担面和甜水面，面条筋道；"
            "还有冒菜、串串香、钵钵鸡、蛋烘糕和三大炮。夏天可以来一碗冰粉解辣。"
            "如果不太能吃辣，点菜时说“微辣”或者“不要辣”，大部分店都能做。",
        ),
        (
            "住在哪个区域比较方便？",
            "第一次去的话，推荐住在春熙路、太古里或者天府广场附近。这一带地铁一号线和二号线交汇，去各个景区都方便，"
            "晚上吃饭逛街也热闹。如果想安静一点，可以选人民公园或宽窄巷子附近的民宿。"
            "假期酒店涨价很快，最好尽早预订，并确认可以免费取消。",
        ),
    ],
    [
        (
            "最近总是失眠，有什么办法吗？",
            "可以先从作息开始调整：每天固定时间起床，即使前一晚没睡好也不要赖床；下午三点以后不喝咖啡和浓茶；"
            "睡前一小时放下手机，调暗灯光，可以读纸质书或者听轻音乐。卧室保持安静、凉爽和黑暗。"
            "如果躺下二十分钟还睡不着，就起来做点放松的事，有困意了再回床上。"
            "失眠持续一个月以上或者严重影响白天的生活，建议去医院睡眠门诊看看。",
        ),
        (
            "睡前喝牛奶有用吗？",
            "牛奶含有色氨酸，它是合成褪黑素的原料，但一杯牛奶里的含量不多，直接的助眠效果很有限。"
            "更多的作用可能来自习惯：一杯温热的饮品能让人放松，形成“准备睡觉”的信号。"
            "如果你喝了觉得舒服，可以保留这个习惯；如果喝完容易起夜，就改在睡前一两个小时喝。",
        ),
        (
            "午睡会不会影响晚上睡觉？",
            "短时间的午睡通常不会，反而能提高下午的精力。建议控制在二十到三十分钟，并且在下午三点前结束。"
            "睡得太久会进入深睡眠，醒来反而昏沉，也会减少晚上的睡意。如果你本来晚上就难以入睡，可以先暂停午睡一两周，看看夜间睡眠是否改善。",
        ),
    ],
    [
        (
            "写一首关于秋天的现代诗。",
            "《秋信》\n\n风把第一封信\n夹进梧桐的叶脉\n路过的人都没有拆开\n\n稻田弯下腰\n"
            "向土地交还整个夏天的光\n母亲在院子里晒柿子\n一串一串，像点亮的灯笼\n\n"
            "我站在傍晚的站台\n听见远处的雁群\n把天空\n轻轻折成一个人字",
        ),
        (
            "很好，能再写一首短一点的，关于冬天的吗？",
            "《雪夜》\n\n炉火读完了最后一页柴\n窗外，雪还在写\n\n"
            "它写得很慢\n一笔一笔\n把整座城市\n改成一张白纸\n\n等天亮的时候\n让第一个出门的人\n落款",
        ),
    ],
    [
        (
            "明天有一个产品经理的面试，怎么准备？",
            "建议从三个方面准备。第一，研究这家公司的产品：亲自用一遍，记下三个优点和三个可以改进的地方，面试时能说出具体的想法。"
            "第二，梳理自己的经历，用“背景、任务、行动、结果”的结构准备两到三个项目故事，结果尽量有数据。"
            "第三，准备常见问题，比如为什么想做产品经理、如何确定需求优先级、和开发意见不一致时怎么办。最后准备两个想问面试官的问题。",
        ),
        (
            "如果被问到“你最大的缺点是什么”该怎么回答？",
            "这个问题考察的是自我认识和改进能力。选一个真实但不影响岗位核心能力的缺点，然后重点讲你如何改进。"
            "例如：“我以前做决定时习惯收集很多信息，有时候会拖慢进度。后来我给每个决定设定截止时间，先做出可回退的小版本，再根据反馈调整。”"
            "避免说“我太追求完美”这种听起来像在夸自己的回答，面试官听得太多了。",
        ),
        (
            "面试结束后需要发感谢信吗？",
            "发一封简短的感谢邮件是加分项，最好在当天发出。内容包括感谢对方的时间，提一句面试中印象深刻的讨论，"
            "再简要补充一个你当时没有说清楚的观点，最后表达对这个岗位的兴趣。三到五句话就够了，不要写成长信。",
        ),
    ],
    [
        (
            "鸡兔同笼，头共有35个，脚共有94只，鸡和兔各有多少只？",
            "假设35只全是鸡，那么应该有 35 × 2 = 70 只脚，比实际少了 94 − 70 = 24 只。"
            "每把一只鸡换成兔子，脚就多 2 只，所以兔子有 24 ÷ 2 = 12 只，鸡有 35 − 12 = 23 只。"
            "验算：23 × 2 + 12 × 4 = 46 + 48 = 94，正确。",
        ),
        (
            "能用方程的方法再解一次吗？",
            "设鸡有 x 只，兔有 y 只。根据头数和脚数可以列出方程组：x + y = 35，2x + 4y = 94。"
            "把第一个方程乘以 2 得到 2x + 2y = 70，用第二个方程减去它，得到 2y = 24，所以 y = 12，x = 23。"
            "结果和假设法一样：鸡 23 只，兔 12 只。方程法的好处是思路固定，遇到更复杂的题目也能套用。",
        ),
        (
            "出一道类似的题给我练习。",
            "练习题：停车场里有汽车和摩托车共 24 辆，一共有 76 个轮子，汽车和摩托车各有多少辆？"
            "提示：汽车有 4 个轮子，摩托车有 2 个轮子，可以先假设全是摩托车。做完后可以告诉我你的答案，我帮你检查。",
        ),
        (
            "汽车14辆，摩托车10辆，对吗？",
            "完全正确！验算一下：14 × 4 + 10 × 2 = 56 + 20 = 76 个轮子，14 + 10 = 24 辆车，两个条件都满足。"
            "你可以试着挑战一下三种对象的版本，比如鸡、兔和鸭子，再加一个条件，思路是一样的。",
        ),
    ],
    [
        (
            "刚工作一年，每月工资八千，怎么开始理财？",
            "可以先把收入分成几个部分。第一步准备应急金，存够三到六个月的生活费，放在随取随用的货币基金里。"
            "第二步控制支出，记账一个月，找出可以减少的开销。第三步再考虑投资，刚开始可以每月定投指数基金，"
            "比如宽基指数，金额控制在工资的百分之十到二十。另外，年轻时给自己配一份医疗险和意外险，花费不多但很重要。",
        ),
        (
            "定投要坚持多久？",
            "定投适合长期，一般建议至少坚持三到五年，跨越一个完整的市场涨跌周期。"
            "短期内账户出现亏损很正常，下跌时同样的钱能买到更多份额，反而有利于拉低成本。"
            "可以设定一个目标收益率，比如达到百分之三十时分批卖出，再开始新一轮定投。用不到的闲钱来定投，才能安心坚持。",
        ),
        (
            "信用卡要不要用？",
            "信用卡本身是个方便的工具，关键看使用习惯。如果你能每月全额还款，它可以提供免息期和积分，还能积累信用记录。"
            "但千万不要只还最低还款额，循环利息折算成年利率通常接近百分之十八。"
            "建议只办一两张卡，设置自动全额还款，并且把信用卡消费也记在账本里。",
        ),
    ],
    [
        (
            "第一次养猫需要准备什么？",
            "基本用品包括：猫粮和饭碗水碗，最好选陶瓷或不锈钢的；猫砂盆和猫砂，新手可以选结团好的豆腐猫砂；"
            "猫抓板，避免它抓沙发；航空箱，带去医院时要用；还有指甲剪、梳子和几个逗猫棒。"
            "接猫回家前，把电线收好，窗户装上纱窗，阳台做好封闭。到家后先让它在一个安静的房间适应几天。",
        ),
        (
            "猫咪多大可以打疫苗？",
            "一般在八到九周龄开始接种猫三联疫苗，之后每隔三到四周再打一针，共打三针。最后一针后一到两周可以打狂犬疫苗。"
            "打疫苗前要确认猫咪精神、食欲都正常，刚到新家的猫最好观察一周再去。"
            "接种后当天不要洗澡，注意观察有没有发烧或精神不好，成年后每年加强一次。",
        ),
        (
            "它总是半夜在家里跑来跑去，怎么办？",
            "猫是晨昏活动的动物，夜里跑酷很常见，特别是年轻的猫。可以在睡前用逗猫棒陪它玩十五分钟，让它消耗体力，"
            "玩完马上喂一顿，猫吃饱后通常会去睡觉。白天给它准备一些益智玩具和猫爬架，减少它白天睡太多。"
            "不要在它夜里叫的时候起来喂食，否则它会学会用这种方式叫醒你。",
        ),
    ],
    [
        (
            "唐朝为什么能成为一个强盛的朝代？",
            "原因是多方面的。制度上，唐朝继承并完善了隋朝的三省六部制和科举制，让更多普通读书人有机会进入官场；"
            "经济上，均田制和租庸调制在前期保证了农业生产和财政收入；对外，唐朝开放包容，丝绸之路贸易繁荣，长安聚集了各国的商人和使节。"
            "再加上唐太宗、唐玄宗前期等君主善于用人，国家在百余年间保持了相对稳定。",
        ),
        (
            "那安史之乱之后呢？",
            "安史之乱从七五五年持续到七六三年，对唐朝打击极大。战乱让北方人口锐减，中央为了平叛给予节度使很大的权力，"
            "形成了藩镇割据的局面。财政上，均田制瓦解，朝廷改行两税法。此后宦官专权和朋党之争也越来越严重。"
            "唐朝虽然又延续了一百多年，但已经很难恢复往日的控制力，最终在九〇七年灭亡。",
        ),
    ],
    [
        (
            "把这句话翻译成英文：学而不思则罔，思而不学则殆。",
            '一种常见的译法是："Learning without thinking leads to confusion; thinking without learning is perilous."\n'
            "这句话出自《论语·为政》。“罔”指迷惑、无所得，“殆”指疑惑而危险。"
            "意思是只读书而不思考，就会被知识迷惑；只空想而不读书，就会陷入困境。",
        ),
        (
            "再翻译一句：三人行，必有我师焉。",
            '可以译为："When three people walk together, there is surely one who can be my teacher."\n'
            '如果想更口语一些，也可以说："Among any three people, there is always something I can learn from someone."\n'
            "原文后面还有两句：“择其善者而从之，其不善者而改之”，意思是学习别人的优点，看到别人的缺点就反省自己。",
        ),
    ],
    [
        (
            "我想开始跑步，但跑一公里就喘不上气，怎么办？",
            "这是刚开始跑步时非常普遍的情况，说明速度太快了。建议采用跑走结合：跑一分钟，走两分钟，重复八组，"
            "每周三次。跑的时候速度要慢到还能完整说一句话。每周逐渐增加跑步时间、减少走路时间，大约六到八周后就能连续跑三十分钟。"
            "跑前做五分钟动态热身，跑后拉伸小腿、大腿前后侧。",
        ),
        (
            "需要买专业跑鞋吗？",
            "建议买一双合适的跑鞋，这是跑步最值得的投入。普通运动鞋或板鞋缓震不足，容易导致膝盖和脚踝不适。"
            "最好下午去实体店试穿，因为下午脚会稍微肿胀。穿上后脚趾前面留一指宽的空间，原地小跑感觉不挤脚、脚跟不滑动即可。"
            "入门不需要追求碳板竞速鞋，选一双缓震型的训练鞋就够了。",
        ),
        (
            "跑完第二天膝盖有点疼，正常吗？",
            "肌肉酸痛是正常的，但膝盖本身疼痛需要重视。如果是膝盖周围轻微酸胀，休息一两天能缓解，可以降低下次的跑量和速度。"
            "如果是膝盖前方或外侧刺痛，下楼梯时更明显，可能是髌股疼痛或髂胫束综合征，应该暂停跑步，"
            "多做臀部和大腿的力量训练。疼痛超过一周不缓解，请去运动医学科检查。",
        ),
    ],
    [
        (
            "阳台朝南，适合种什么菜？",
            "朝南阳台光照充足，选择很多。新手推荐小葱、生菜、小白菜和空心菜，生长快，一个月左右就能吃。"
            "有经验之后可以种番茄、辣椒和草莓，它们喜欢阳光，但需要搭架和及时施肥。"
            "种菜的容器至少要有二十厘米深，底部留排水孔，用疏松透气的营养土，不要直接用小区里挖的土。",
        ),
        (
            "番茄叶子发黄是怎么回事？",
            "常见原因有几种。如果是下部老叶先发黄，新叶正常，多半是缺氮，可以追施稀释的氮肥或者腐熟的有机肥。"
            "如果叶片发黄同时土壤一直湿润，可能是浇水太多导致烂根，要减少浇水，等表土干了再浇。"
            "如果叶子上有黄斑，背面有小虫子，可能是蚜虫或白粉虱，需要用黄板诱捕或喷洒肥皂水。",
        ),
        (
            "用厨余做肥料可行吗？",
            "可行，但一定要先发酵腐熟，直接埋进花盆会发臭、招虫，还会烧根。做法是准备一个带盖的桶，放入果皮、菜叶和茶叶渣，"
            "每放一层撒一层发酵菌糠或土，压实后密封。大约一到两个月后没有臭味、颜色变深，就可以兑水稀释使用。"
            "肉类、油脂和骨头不要放进去。",
        ),
    ],
    [
        (
            "工作总是做不完，怎么管理时间？",
            "先试试三个简单的方法。第一，每天早上花五分钟写下今天最重要的三件事，优先完成它们，其他的事往后排。"
            "第二，把大任务拆成半小时内能完成的小步骤，并估算时间。第三，集中处理消息，比如每隔一小时查看一次，"
            "专注时关掉通知。一周后回顾一下，看看时间主要花在了哪里，再做调整。",
        ),
        (
            "番茄工作法具体怎么做？",
            "选择一个任务，设定二十五分钟的计时器，在这段时间里只做这一件事；计时结束后休息五分钟，这样算一个番茄。"
            "每完成四个番茄，休息十五到三十分钟。如果中途想起别的事，先记在纸上，等休息时再处理。"
            "刚开始可能坚持不了二十五分钟，可以从十五分钟开始，慢慢延长。",
        ),
    ],
    [
        (
            "电脑开机特别慢，要三四分钟，怎么解决？",
            "可以按以下顺序排查。第一，打开任务管理器的“启动”页，禁用不需要开机自启的软件。"
            "第二，查看硬盘类型，如果还是机械硬盘，换成固态硬盘是提升最明显的办法，开机时间通常能缩短到半分钟以内。"
            "第三，检查系统盘剩余空间，至少保留百分之十五。第四，用杀毒软件全盘扫描一次，排除恶意程序。",
        ),
        (
            "换固态硬盘需要重装系统吗？",
            "不一定。可以用硬盘厂商提供的迁移工具，或者免费的克隆软件，把旧硬盘的系统完整复制到新固态硬盘上，"
            "再在BIOS里把新硬盘设为第一启动项。不过如果旧系统已经用了好几年、问题较多，趁换硬盘重装一个干净的系统效果更好。"
            "操作前务必备份重要文件。",
        ),
        (
            "笔记本能自己换吗？",
            "大多数笔记本可以，但要先确认型号。查一下说明书或者拆机视频，看它是否有空余的M.2接口或2.5英寸硬盘位。"
            "一些超薄本的固态硬盘是焊在主板上的，无法更换。动手前断开电源，拆下电池排线，用合适的螺丝刀，"
            "拆后盖时用塑料撬片沿缝隙慢慢撬开，不要用力过猛。",
        ),
    ],
]

EN_THREADS: list[list[tuple[str, str]]] = [
    [
        (
            "What is the difference between git merge and git rebase?",
            "Both integrate changes from one branch into another, but they record history differently. "
            "A merge creates a new merge commit that ties the two histories together, so the full record of when "
            "branches diverged is preserved. A rebase replays your commits on top of the other branch, producing "
            "a straight line of history as if you had started your work later. Rebase gives a cleaner log; merge is "
            "safer on shared branches because it never rewrites existing commits.",
        ),
        (
            "When should I avoid rebasing?",
            "Avoid rebasing commits that other people have already pulled. Rebasing rewrites commit hashes, so "
            "anyone who built on the old commits will see duplicated or conflicting history when they pull again. "
            "A good rule is: rebase your local feature branch to tidy it up before opening a pull request, but "
            "merge once the branch is public.",
        ),
        (
            "How do I undo my last commit but keep the changes?",
            "Run `git reset --soft HEAD~1`. This moves the branch pointer back one commit and leaves your changes "
            "staged, so you can edit them and commit again. If you want the changes unstaged, use "
            "`git reset HEAD~1` instead. If the commit was already pushed, prefer `git revert HEAD`, which adds a "
            "new commit that undoes it without rewriting history.",
        ),
    ],
    [
        (
            "My homemade bread always comes out dense. What am I doing wrong?",
            "Dense bread usually comes from one of three things. The dough may be under-kneaded, so the gluten "
            "network is too weak to trap gas; knead until a small piece stretches thin enough to let light "
            "through. The rise may be too short, especially in a cold kitchen; let it double in size rather than "
            "following the clock. Or the flour may be too low in protein; use bread flour for sandwich loaves.",
        ),
        (
            "Can I use instant yeast instead of active dry?",
            "Yes. Instant yeast can be mixed straight into the flour without proofing it in water first. Use about "
            "25 percent less by weight than the active dry yeast the recipe calls for, and expect the first rise to "
            "be a little faster. Everything else in the recipe stays the same.",
        ),
        (
            "How do I know when the loaf is fully baked?",
            "The most reliable check is internal temperature: a lean loaf is done at about 95 to 98 degrees "
            "Celsius in the centre, an enriched loaf with butter and milk at about 88 to 90. Without a "
            "thermometer, tap the bottom; it should sound hollow. Let it cool for at least an hour before "
            "slicing, because the crumb is still setting.",
        ),
    ],
    [
        (
            "I have ten days in Japan in April. How should I split my time?",
            "A balanced first trip could be four nights in Tokyo, one night in Hakone, four nights in Kyoto with a "
            "day trip to Nara, and a final night in Osaka near the airport. Early April is cherry blossom season, "
            "so book accommodation as early as you can and expect crowds at famous viewing spots. A seven-day rail "
            "pass can cover the Tokyo to Kyoto leg if you add a day trip to Hiroshima.",
        ),
        (
            "Is the rail pass still worth it after the price increase?",
            "It depends on your route. For the plan above without Hiroshima, individual shinkansen tickets are "
            "usually cheaper than the seven-day pass. Add up the one-way fares for each long journey on a fare "
            "calculator and compare; the pass only pays off if you make several long trips within seven days. "
            "For local travel, a rechargeable IC card like Suica is the easiest option.",
        ),
        (
            "Any etiquette I should know about?",
            "A few things help a lot. Keep quiet on trains and avoid phone calls. Do not eat while walking in busy "
            "streets. Tipping is not expected and can cause confusion. Remove your shoes where you see a raised "
            "entrance or slippers laid out. At shrines and temples, follow the posted rules about photography. "
            "Carry a small bag for your rubbish, since public bins are rare.",
        ),
    ],
    [
        (
            "Can you help me write a short cover letter for a junior data analyst job?",
            "Dear Hiring Manager,\n\nI am applying for the Junior Data Analyst position at your company. During my "
            "degree in economics I built a dashboard that tracked sales for a local retailer, using SQL to clean "
            "two years of transaction data and Python to forecast weekly demand. The owner now uses it to plan "
            "stock, which cut waste by about ten percent.\n\nI enjoy turning messy data into clear answers, and I "
            "would welcome the chance to do that for your team.\n\nKind regards,\nAlex Chen",
        ),
        (
            "Make it sound a bit more confident.",
            "Dear Hiring Manager,\n\nI would like to bring my analytical skills to your team as a Junior Data "
            "Analyst. For a local retailer, I designed a sales dashboard from two years of raw transactions, "
            "cleaned the data with SQL and built a weekly demand forecast in Python. The result was a ten percent "
            "reduction in wasted stock.\n\nI turn messy data into decisions people act on, and I am ready to do the "
            "same for you.\n\nKind regards,\nAlex Chen",
        ),
    ],
    [
        (
            "Explain photosynthesis to a ten-year-old.",
            "Plants make their own food, and they do it with sunlight. Their leaves are full of tiny green parts "
            "called chloroplasts that catch light like solar panels. The plant drinks water through its roots and "
            "breathes in a gas called carbon dioxide through little holes in its leaves. Using the energy from the "
            "light, it turns the water and carbon dioxide into sugar, which is its food. The leftover oxygen goes "
            "into the air, and that is the oxygen we breathe.",
        ),
        (
            "Why are leaves green and not black, if black absorbs more light?",
            "Great question. Chlorophyll, the pigment that catches light, absorbs mostly red and blue light and "
            "reflects green, so we see green. Scientists think plants settled on this because it is a good balance: "
            "absorbing every colour could overheat and damage the leaf on sunny days, and the green light that is "
            "reflected near the top can still reach leaves lower down.",
        ),
    ],
    [
        (
            "How do I make a monthly budget that I will actually stick to?",
            "Start from what you really spend, not what you wish you spent. Export the last three months of bank "
            "transactions and group them into a few categories: housing, food, transport, bills, fun and savings. "
            "Set each category a little below the three-month average, and move your savings to a separate "
            "account on payday so it never sits in your spending money. Review once a week for ten minutes; small "
            "corrections are easier than a big reckoning at the end of the month.",
        ),
        (
            "What is the 50/30/20 rule?",
            "It is a simple starting split for take-home pay: 50 percent for needs such as rent, groceries and "
            "bills, 30 percent for wants such as eating out and hobbies, and 20 percent for savings and paying off "
            "debt. It is a guideline rather than a law. In expensive cities needs often take more than half, so "
            "adjust the numbers but keep the habit of saving a fixed share first.",
        ),
        (
            "Should I pay off debt or save first?",
            "Build a small emergency fund first, roughly one month of expenses, so an unexpected bill does not "
            "push you back into debt. Then pay down any debt with a high interest rate, such as credit cards, as "
            "fast as you can, because that rate is higher than anything savings will earn. After that, grow the "
            "emergency fund to three to six months and start investing for the long term.",
        ),
    ],
    [
        (
            "I am 35 and want to learn guitar. Is it too late?",
            "Not at all. Adults often progress faster than children at the start, because they practise more "
            "deliberately and understand music theory more easily. Fifteen to twenty minutes a day is enough to "
            "see steady progress. Begin with a few open chords such as G, C, D and E minor, which together let you "
            "play hundreds of popular songs.",
        ),
        (
            "My fingertips hurt after practising. Is that normal?",
            "Yes, that is completely normal for the first few weeks. The skin on your fingertips needs time to "
            "build calluses. Keep sessions short and frequent rather than long, and stop if you feel sharp pain. "
            "Check that the strings are not set too high above the fretboard; a music shop can lower the action "
            "cheaply, which makes pressing the strings much easier.",
        ),
        (
            "How do I switch chords faster?",
            "Practise the change itself, not the chords separately. Pick two chords, set a timer for one minute "
            "and switch between them as many times as you can, counting the clean changes. Look for anchor "
            "fingers that stay on the same string between chords. Move all fingers together as one shape rather "
            "than placing them one by one. Do this daily and your count will climb within a week.",
        ),
        (
            "What song should I learn first?",
            "Choose a slow song you love that uses only the chords you know. Many folk and pop songs use just G, "
            "C, D and E minor, often in the same order for the whole song. Strum only on the first beat of each bar "
            "at first, then add more strums as the changes become smooth. Enjoying the song matters more than "
            "picking the perfect exercise.",
        ),
    ],
    [
        (
            "Write a SQL query that returns the top five customers by total order value.",
            "Assuming tables `customers(id, name)` and `orders(id, customer_id, amount)`:\n\n"
            "SELECT c.id, c.name, SUM(o.amount) AS total\nFROM customers AS c\n"
            "JOIN orders AS o ON o.customer_id = c.id\nGROUP BY c.id, c.name\nORDER BY total DESC\nLIMIT 5;\n\n"
            "The join matches each order to its customer, the grouping adds up the amounts per customer, and the "
            "ordering puts the largest totals first.",
        ),
        (
            "How would I include customers with no orders, showing zero?",
            "Use a left join so every customer is kept, and replace the missing sum with zero:\n\n"
            "SELECT c.id, c.name, COALESCE(SUM(o.amount), 0) AS total\nFROM customers AS c\n"
            "LEFT JOIN orders AS o ON o.customer_id = c.id\nGROUP BY c.id, c.name\nORDER BY total DESC;\n\n"
            "Without COALESCE the total for those customers would be NULL, which sorts differently depending on "
            "the database.",
        ),
    ],
    [
        (
            "Why do my houseplants keep getting yellow leaves?",
            "Overwatering is the most common cause. Roots sitting in wet soil cannot breathe and begin to rot, and "
            "the plant shows it with soft yellow leaves. Water only when the top few centimetres of soil feel dry, "
            "and make sure every pot has a drainage hole. Other causes are too little light, a sudden draught or "
            "an old leaf simply reaching the end of its life, which is nothing to worry about.",
        ),
        (
            "Which plants are hard to kill for a dark apartment?",
            "Snake plants, ZZ plants and pothos all tolerate low light and irregular watering. The ZZ plant stores "
            "water in its thick roots and can go weeks without a drink. Pothos grows quickly and tells you when it "
            "is thirsty by drooping slightly, then recovers within hours of watering. Keep them away from cold "
            "windows in winter.",
        ),
        (
            "Are any of those safe for cats?",
            "Unfortunately none of the three are considered safe; all can irritate a cat's mouth and stomach if "
            "chewed. Cat-friendly options that also cope with modest light include the parlour palm, the spider "
            "plant and the cast iron plant. Spider plants are popular with cats, so hang them out of reach if you "
            "want the leaves to survive.",
        ),
    ],
    [
        (
            "I have to give a ten-minute talk at work and I am nervous. Any tips?",
            "Structure helps most. Open with the one thing you want people to remember, give three supporting "
            "points with one example each, and close by repeating the main message. Rehearse out loud at least "
            "three times, once in front of a friend or a camera. Nerves are normal and usually invisible to the "
            "audience; a slow breath before you start and a glass of water nearby make a real difference.",
        ),
        (
            "Should I memorise it word for word?",
            "Memorise the first two sentences and the closing line, so you start and finish strongly, but not the "
            "rest. A word-for-word script makes you sound stiff and leaves you stranded if you lose your place. "
            "Instead, know the order of your points and keep a card with short prompts. Speaking from prompts "
            "sounds natural, and small wording changes do not matter.",
        ),
    ],
    [
        (
            "A recipe asks for 250 grams of flour. How many cups is that?",
            "For all-purpose flour, one cup weighs about 125 grams when spooned into the cup and levelled, so "
            "250 grams is about 2 cups. If you scoop straight from the bag the flour is packed more tightly and "
            "a cup can weigh 140 grams or more, which would give you too much. For baking, a kitchen scale is far "
            "more accurate than cups.",
        ),
        (
            "And 180 degrees Celsius in Fahrenheit?",
            "Multiply by 9, divide by 5 and add 32: 180 × 9 / 5 + 32 = 356 degrees Fahrenheit. Recipes usually "
            "round this to 350 degrees. If your oven is a fan oven, many recipes suggest lowering the temperature "
            "by about 20 degrees Celsius.",
        ),
    ],
    [
        (
            "Help me write a polite email to my landlord about a broken heater.",
            "Subject: Heater not working in flat 4B\n\nDear Ms Patel,\n\nI am writing to let you know that the "
            "heater in the living room of flat 4B stopped working on Monday evening. It does not turn on at any "
            "setting, and the room is now quite cold at night. Could you arrange a repair at your earliest "
            "convenience? I am at home after 5 pm on weekdays and any time on Saturday.\n\nThank you for your "
            "help.\n\nBest regards,\nSam Lee",
        ),
        (
            "It has been a week with no reply. Can you write a follow-up?",
            "Subject: Follow-up: heater repair in flat 4B\n\nDear Ms Patel,\n\nI am following up on my email of "
            "last Tuesday about the broken heater in flat 4B. The heater is still not working, and with night "
            "temperatures now near freezing the flat is becoming difficult to live in. Please let me know by "
            "Friday when a repair can be scheduled. I have attached a photo of the unit and its error light.\n\n"
            "Thank you,\nSam Lee",
        ),
    ],
]

SYSTEM_PROMPTS = [
    "你是一名耐心的中文助教，回答要条理清晰，必要时举例说明。",
    "You are a concise assistant. Answer in plain English and keep replies under 120 words.",
    "你是一位资深厨师，用家常的语气回答烹饪问题。",
    "You are a friendly travel advisor who gives practical, specific suggestions.",
]


def _conversations(threads: list[list[tuple[str, str]]], count: int) -> list[list[tuple[str, str]]]:
    """Build `count` distinct conversations of 2–5 turns from the threads, deterministically.

    Pass 0 uses each whole thread; later passes take a prefix of one thread and continue with the
    opening of another, a topic switch like the ones in real chat logs.
    """
    out: list[list[tuple[str, str]]] = []
    n = len(threads)
    rounds = 0
    while len(out) < count:
        for i, thread in enumerate(threads):
            if len(out) == count:
                break
            if rounds == 0:
                turns = list(thread[:5])
            else:
                head = 2 if rounds % 2 else min(3, len(thread))
                other = threads[(i + rounds) % n]
                tail = 1 + (i + rounds) % 2
                turns = list(thread[:head]) + list(other[:tail])
                turns = turns[:5]
            out.append(turns)
        rounds += 1
    return out


def official_records() -> list[dict]:
    zh = _conversations(ZH_THREADS, 32)
    en = _conversations(EN_THREADS, 32)
    records = []
    for k in range(64):
        turns = zh[k // 2] if k % 2 == 0 else en[k // 2]
        conversations = []
        for question, answer in turns:
            conversations.append({"from": "human", "value": question})
            conversations.append({"from": "gpt", "value": answer})
        records.append({"id": str(10001 + k), "conversations": conversations})
    return records


def system_records() -> list[dict]:
    threads = [ZH_THREADS[1], EN_THREADS[5], ZH_THREADS[2], EN_THREADS[2]] * 2
    records = []
    for k, thread in enumerate(threads):
        turns = thread[: 2 + k % 2]
        conversations = [{"from": "system", "value": SYSTEM_PROMPTS[k % len(SYSTEM_PROMPTS)]}]
        for question, answer in turns:
            conversations.append({"from": "user", "value": question})
            conversations.append({"from": "assistant", "value": answer})
        records.append({"id": f"sys-{k + 1}", "conversations": conversations})
    return records


def openai_records() -> list[dict]:
    records = []
    for k, thread in enumerate([ZH_THREADS[4], EN_THREADS[0], ZH_THREADS[7], EN_THREADS[6]]):
        messages = []
        if k % 2 == 0:
            messages.append({"role": "system", "content": SYSTEM_PROMPTS[k % len(SYSTEM_PROMPTS)]})
        for question, answer in thread[:2]:
            messages.append({"role": "user", "content": question})
            messages.append({"role": "assistant", "content": answer})
        records.append({"id": f"openai-{k + 1}", "messages": messages})
    return records


def alpaca_records() -> list[dict]:
    return [
        {
            "instruction": "把下面的句子改写得更简洁。",
            "input": "由于今天天气的原因，我们决定把原本计划在今天下午举行的户外活动推迟到明天下午再举行。",
            "output": "因天气原因，今天下午的户外活动推迟到明天下午。",
        },
        {
            "instruction": "Classify the sentiment of the review as positive, negative or neutral.",
            "input": "The battery lasts two days, but the screen scratches far too easily.",
            "output": "Neutral: the review praises the battery life and criticises the screen.",
        },
        {
            "instruction": "那个数的平方根是多少？",
            "input": "",
            "output": "144 的平方根是 12（以及 −12）。",
            "history": [["144 除以 12 等于多少？", "144 ÷ 12 = 12。"]],
            "system": "你是一名数学老师，回答简短准确。",
        },
        {
            "instruction": "Now make it rhyme.",
            "input": "",
            "output": "The kettle sings, the toast is brown; the sleepy cat comes padding down.",
            "history": [
                [
                    "Write one sentence about breakfast.",
                    "The kettle whistled while the toast turned golden and the cat wandered in.",
                ]
            ],
        },
    ]


def sharegpt_records() -> list[dict]:
    records = []
    for k, thread in enumerate([ZH_THREADS[9], EN_THREADS[8], ZH_THREADS[12]]):
        conversations = []
        for question, answer in thread[:2]:
            conversations.append({"from": "human", "value": question})
            conversations.append({"from": "gpt", "value": answer})
        records.append({"id": f"sharegpt-{k + 1}", "conversations": conversations})
    return records


def _write_json(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_parquet(path: Path, records: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # No compression statistics or timestamps vary between runs, so the bytes are reproducible.
    pq.write_table(pa.Table.from_pylist(records), path, compression="none", write_statistics=False)


def main() -> None:
    _write_json(HERE / "sample_chat.json", official_records())
    _write_json(HERE / "sample_system.json", system_records())
    examples = HERE / "examples"
    _write_jsonl(examples / "openai.jsonl", openai_records())
    _write_json(examples / "alpaca.json", alpaca_records())
    _write_jsonl(examples / "sharegpt.jsonl", sharegpt_records())
    _write_parquet(examples / "sharegpt.parquet", sharegpt_records())


if __name__ == "__main__":
    main()
