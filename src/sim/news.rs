//! The simulated news-service: a rotating selection of plausible global headlines, shaped
//! like newsdata.io cards and published as the news-service event.

use std::time::{Duration, SystemTime};

use rand::Rng;
use rand::seq::SliceRandom;
use serde::Serialize;

use super::clock::{epoch_ms, utc_seconds};

/// What caused a news refresh (the event's top-level `source`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Initial,
    Interval,
    Bff,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Initial => "initial",
            Trigger::Interval => "interval",
            Trigger::Bff => "bff",
        }
    }
}

/// A headline template: `{n}` is replaced by a number, `{p}` by a percentage.
struct Story {
    categories: &'static [&'static str],
    title: &'static str,
    description: &'static str,
    source: &'static str,
    slug: &'static str,
}

const fn story(
    categories: &'static [&'static str],
    source: &'static str,
    slug: &'static str,
    title: &'static str,
    description: &'static str,
) -> Story {
    Story {
        categories,
        title,
        description,
        source,
        slug,
    }
}

const BIZ: &[&str] = &["business"];
const TECH: &[&str] = &["technology"];
const TECH_BIZ: &[&str] = &["technology", "business"];
const POLITICS: &[&str] = &["politics"];
const WORLD: &[&str] = &["world"];
const SCIENCE: &[&str] = &["science"];
const HEALTH: &[&str] = &["health"];
const SPORTS: &[&str] = &["sports"];
const ENV: &[&str] = &["environment", "science"];

#[rustfmt::skip]
const STORIES: &[Story] = &[
    story(BIZ, "examplenews", "markets/central-bank-holds-rates", "Central bank holds rates steady, signals patience on cuts", "Policymakers kept the benchmark rate unchanged and said they would wait for clearer evidence that inflation is cooling before easing."),
    story(TECH_BIZ, "techwire", "chipmaker-record-orders", "Chipmaker shares jump {p} after record data-centre orders", "Quarterly bookings for AI accelerators beat analyst estimates, sending the stock to an all-time high in early trading."),
    story(POLITICS, "dailyledger", "politics/data-protection-amendment", "Parliament passes data protection amendment after late-night session", ""),
    story(BIZ, "commoditydesk", "oil-output-talks", "Oil slips as producers weigh output increase of {n}00,000 barrels a day", "Brent crude fell for a second session as delegates signalled that a modest supply increase could be agreed at next week's meeting."),
    story(TECH, "devdigest", "engine-release", "Open-source browser engine ships major release with faster layout", "The new version rewrites the layout pipeline and cuts page load times by up to {p} on mid-range phones, the maintainers said."),
    story(POLITICS, "thecapitolpost", "coalition-talks", "Coalition talks resume as deadline for budget deal nears", "Negotiators returned to the table with {n} days left to agree a spending plan, after a week of public disagreements over tax."),
    story(BIZ, "examplenews", "retail-sales", "Retail sales rise {p} as shoppers return to high streets", "Spending on clothing and household goods drove the increase, offsetting weaker demand for electronics."),
    story(TECH_BIZ, "techwire", "satellite-broadband", "Satellite broadband provider signs up its {n} millionth customer", "The company said demand in rural areas continued to outpace capacity and announced {n} additional launches this year."),
    story(WORLD, "globaldispatch", "ceasefire-talks", "Ceasefire talks enter second week with humanitarian corridor agreed", "Mediators said both sides had accepted a {n}-day pause in fighting to allow aid convoys through."),
    story(SCIENCE, "sciencedaily-example", "exoplanet-water", "Telescope finds signs of water vapour on temperate exoplanet", "Astronomers detected the signature in the atmosphere of a planet {n}0 light years away, orbiting within its star's habitable zone."),
    story(HEALTH, "healthline-example", "malaria-vaccine-rollout", "Malaria vaccine rollout reaches {n} more countries", "Health officials expect the expanded programme to protect millions of children under five by the end of next year."),
    story(SPORTS, "sportsdesk", "cup-final-late-winner", "Late winner settles cup final in front of record crowd", "A stoppage-time header decided a tense final watched by more than {n}0,000 fans at the national stadium."),
    story(ENV, "greenwire", "record-solar-output", "Solar output hits record as spring sunshine lifts grid share to {p}", "Grid operators said renewables supplied most of the country's electricity for the first time on a weekday."),
    story(BIZ, "marketwatch-example", "bond-yields", "Bond yields climb as traders pare bets on rate cuts", "Ten-year yields rose {n} basis points after stronger-than-expected jobs data pushed back expectations of monetary easing."),
    story(TECH, "devdigest", "ai-model-open-weights", "Research lab releases open-weight language model for laptops", "The model runs on consumer hardware and matches larger systems on coding benchmarks, according to the published evaluation."),
    story(TECH_BIZ, "techwire", "cloud-outage", "Cloud provider restores services after {n}-hour regional outage", "A faulty configuration change took down storage and compute services for thousands of customers, the company said in a preliminary report."),
    story(BIZ, "commoditydesk", "gold-record", "Gold hits record high as investors seek safety", "The metal rose {p} on the week, its strongest run since the start of the year, as equity markets wobbled."),
    story(WORLD, "globaldispatch", "summit-trade-deal", "Leaders sign regional trade deal cutting tariffs on {n}00 goods", "The agreement removes duties on agricultural products and machinery and is expected to take effect within a year."),
    story(POLITICS, "dailyledger", "election-turnout", "Early turnout in regional elections up {p} on last cycle", "Election officials credited expanded postal voting and longer polling hours for the increase."),
    story(SCIENCE, "sciencedaily-example", "fusion-milestone", "Fusion experiment sustains plasma for a record {n} seconds", "Engineers said the result brings a commercial demonstration plant a step closer, though major hurdles remain."),
    story(HEALTH, "healthline-example", "sleep-study", "Large study links regular sleep schedule to lower heart risk", "Researchers followed more than {n}0,000 adults for eight years and found consistent bedtimes mattered as much as total sleep."),
    story(SPORTS, "sportsdesk", "marathon-record", "Course record falls at city marathon", "The winner finished in under two hours and {n} minutes, shaving almost a minute off the previous best."),
    story(ENV, "greenwire", "river-cleanup", "River clean-up removes {n} tonnes of plastic in a month", "Volunteers and new floating barriers cleared a record amount of waste before the monsoon season."),
    story(BIZ, "marketwatch-example", "airline-profits", "Airlines lift profit forecasts on strong summer bookings", "Carriers reported load factors above {n}0 % and said fares would stay firm despite higher fuel costs."),
    story(TECH, "devdigest", "quantum-error-correction", "Quantum computing team demonstrates error rates below threshold", "The result, published today, shows logical qubits outperforming physical ones for the first time at this scale."),
    story(WORLD, "globaldispatch", "heatwave-warning", "Authorities issue heatwave warning as temperatures near {n}0 °C", "Schools will close early and outdoor work is restricted during the afternoon for the rest of the week."),
    story(BIZ, "examplenews", "housing-market", "Housing market cools as mortgage approvals fall {p}", "Lenders reported the lowest number of approvals in six months, with first-time buyers hardest hit."),
    story(TECH_BIZ, "techwire", "ev-battery-plant", "Carmaker breaks ground on battery plant creating {n},000 jobs", "The factory will supply packs for three new electric models and is due to start production in two years."),
];

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Card {
    id: String,
    title: String,
    description: Option<String>,
    image: Option<String>,
    url: String,
    source: &'static str,
    published_at: String,
    category: &'static [&'static str],
}

#[derive(Serialize)]
struct Payload {
    source: &'static str,
    scope: &'static str,
    data: Vec<Card>,
}

#[derive(Serialize)]
struct NewsEvent {
    scope: &'static str,
    payload: Payload,
    timestamp: u64,
    source: &'static str,
}

fn fill(template: &str, rng: &mut impl Rng) -> String {
    let mut out = template.to_owned();
    while let Some(i) = out.find("{n}") {
        out.replace_range(i..i + 3, &rng.random_range(2..10).to_string());
    }
    while let Some(i) = out.find("{p}") {
        let pct = format!("{:.1}%", rng.random_range(0.3..9.0));
        out.replace_range(i..i + 3, &pct);
    }
    out
}

/// A news-service event with eight to ten cards, newest first.
pub fn news(trigger: Trigger, now: SystemTime, rng: &mut impl Rng) -> Vec<u8> {
    let mut picks: Vec<&Story> = STORIES.iter().collect();
    picks.shuffle(rng);
    picks.truncate(rng.random_range(8..=10));
    // Drawn to the second, then sorted: jitter added after sorting whole minutes could put
    // two cards of one minute oldest first.
    let mut seconds_ago: Vec<u64> = picks.iter().map(|_| rng.random_range(60..14_400)).collect();
    seconds_ago.sort_unstable();
    let date = utc_seconds(now);
    let day = date.get(..10).unwrap_or("2026-01-01");
    let data = picks
        .into_iter()
        .zip(seconds_ago)
        .map(|(story, ago)| {
            let published = now.checked_sub(Duration::from_secs(ago)).unwrap_or(now);
            let description = match story.description {
                "" => None,
                _ if rng.random_bool(0.05) => Some(String::new()),
                d => Some(fill(d, rng)),
            };
            let image = rng.random_bool(0.85).then(|| {
                format!(
                    "https://images.{}.example/{day}/{}.jpg",
                    story.source, story.slug
                )
            });
            Card {
                id: format!("{:032x}", rng.random::<u128>()),
                title: fill(story.title, rng),
                description,
                image,
                url: format!("https://www.{}.example/{}-{day}/", story.source, story.slug),
                source: story.source,
                published_at: utc_seconds(published),
                category: story.categories,
            }
        })
        .collect();
    let event = NewsEvent {
        scope: "global",
        payload: Payload {
            source: "api",
            scope: "global",
            data,
        },
        timestamp: epoch_ms(now),
        source: trigger.as_str(),
    };
    super::js_json(&event).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use serde_json::Value;

    #[test]
    fn cards_are_fresh_distinct_and_newest_first() {
        let now = SystemTime::now();
        // Many seeds: one in about twelve events had two cards of a minute out of order.
        for (seed, trigger) in (0..300).map(|seed| {
            let triggers = [Trigger::Initial, Trigger::Interval, Trigger::Bff];
            (seed, triggers[seed as usize % 3])
        }) {
            let mut rng = StdRng::seed_from_u64(seed);
            let v: Value = serde_json::from_slice(&news(trigger, now, &mut rng)).unwrap();
            assert_eq!(v["source"], trigger.as_str());
            let cards = v["payload"]["data"].as_array().unwrap();
            assert!((8..=10).contains(&cards.len()));
            let dates: Vec<&str> = cards
                .iter()
                .map(|c| c["publishedAt"].as_str().unwrap())
                .collect();
            assert!(dates.windows(2).all(|w| w[0] >= w[1]), "{dates:?}");
            let mut ids: Vec<&str> = cards.iter().map(|c| c["id"].as_str().unwrap()).collect();
            assert!(ids.iter().all(|i| i.len() == 32));
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), cards.len());
            assert!(
                cards
                    .iter()
                    .all(|c| !c["title"].as_str().unwrap().contains('{'))
            );
        }
    }
}
