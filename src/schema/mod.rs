//! The unified schema v1 (民生资金监督统一数据标准): the ten record types the platform collects,
//! their fields in template column order, each field's kind and whether it is required.
//!
//! This module owns the *contract* (`shared/unified-schema.md`) in code form:
//! - [`RecordType`] and [`FieldDef`] describe what a record of each type holds;
//! - [`rules`] validates and normalises one source value for one field
//!   ([`rules::check_field`]);
//! - [`json_schema`] exports the same contract as JSON Schema for the platform and for
//!   departments.
//!
//! Everything here is static data: the field tables are `static` slices, so looking a field up
//! costs nothing and the tables can be handed out as `&'static`.

pub mod json_schema;
pub mod rules;

use std::fmt;
use std::str::FromStr;

/// One of the ten forms the provincial platform collects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordType {
    FundProject,
    BudgetSource,
    BudgetAllocation,
    FundDisbursement,
    IndividualSubsidy,
    ProjectPublicity,
    ProjectExpenditure,
    VillageFinance,
    PovertyTarget,
    PovertyAssessment,
}

impl RecordType {
    /// Every record type, in the order of unified-schema.md.
    pub const ALL: [RecordType; 10] = [
        RecordType::FundProject,
        RecordType::BudgetSource,
        RecordType::BudgetAllocation,
        RecordType::FundDisbursement,
        RecordType::IndividualSubsidy,
        RecordType::ProjectPublicity,
        RecordType::ProjectExpenditure,
        RecordType::VillageFinance,
        RecordType::PovertyTarget,
        RecordType::PovertyAssessment,
    ];

    /// The wire name (`"type"` of an envelope line, first part of the routing key).
    pub fn as_str(self) -> &'static str {
        match self {
            RecordType::FundProject => "fund_project",
            RecordType::BudgetSource => "budget_source",
            RecordType::BudgetAllocation => "budget_allocation",
            RecordType::FundDisbursement => "fund_disbursement",
            RecordType::IndividualSubsidy => "individual_subsidy",
            RecordType::ProjectPublicity => "project_publicity",
            RecordType::ProjectExpenditure => "project_expenditure",
            RecordType::VillageFinance => "village_finance",
            RecordType::PovertyTarget => "poverty_target",
            RecordType::PovertyAssessment => "poverty_assessment",
        }
    }

    /// The Chinese name of the form, as departments know it.
    pub fn label(self) -> &'static str {
        match self {
            RecordType::FundProject => "民生资金项目主表",
            RecordType::BudgetSource => "指标来源表",
            RecordType::BudgetAllocation => "指标下达表",
            RecordType::FundDisbursement => "项目资金拨付表",
            RecordType::IndividualSubsidy => "个人补助资金发放表",
            RecordType::ProjectPublicity => "项目公示表",
            RecordType::ProjectExpenditure => "项目支出明细表",
            RecordType::VillageFinance => "村级财务公开",
            RecordType::PovertyTarget => "扶贫对象",
            RecordType::PovertyAssessment => "扶贫开发工作考核结果",
        }
    }

    /// The fields of this record type, in the order of unified-schema.md, which is also the
    /// column order of the fill-in templates.
    pub fn fields(self) -> &'static [FieldDef] {
        match self {
            RecordType::FundProject => FUND_PROJECT,
            RecordType::BudgetSource => BUDGET_SOURCE,
            RecordType::BudgetAllocation => BUDGET_ALLOCATION,
            RecordType::FundDisbursement => FUND_DISBURSEMENT,
            RecordType::IndividualSubsidy => INDIVIDUAL_SUBSIDY,
            RecordType::ProjectPublicity => PROJECT_PUBLICITY,
            RecordType::ProjectExpenditure => PROJECT_EXPENDITURE,
            RecordType::VillageFinance => VILLAGE_FINANCE,
            RecordType::PovertyTarget => POVERTY_TARGET,
            RecordType::PovertyAssessment => POVERTY_ASSESSMENT,
        }
    }

    /// The field with this wire name, if the record type has one.
    pub fn field(self, name: &str) -> Option<&'static FieldDef> {
        self.fields().iter().find(|f| f.name == name)
    }

    /// `poverty_target` holds personal data of poverty-alleviation households: it is sent
    /// only for comparison on the platform and is never published.
    pub fn restricted(self) -> bool {
        matches!(self, RecordType::PovertyTarget)
    }
}

impl fmt::Display for RecordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record type name that is not one of the ten.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown record type {name:?}; valid types are: {}",
    valid_type_names()
)]
pub struct UnknownRecordType {
    pub name: String,
}

fn valid_type_names() -> String {
    RecordType::ALL.map(RecordType::as_str).join(", ")
}

impl FromStr for RecordType {
    type Err = UnknownRecordType;

    /// Parses a wire name exactly (no trimming, no case folding: configuration is written
    /// by people, and a near miss should be pointed out rather than guessed).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RecordType::ALL
            .into_iter()
            .find(|rt| rt.as_str() == s)
            .ok_or_else(|| UnknownRecordType { name: s.to_owned() })
    }
}

/// One field of a record type.
#[derive(Debug)]
pub struct FieldDef {
    /// Wire name, the key in the record's `data` object.
    pub name: &'static str,
    /// Chinese header used in the fill-in templates.
    pub label: &'static str,
    pub kind: FieldKind,
    /// Marked `*` in unified-schema.md: a record without it is rejected.
    pub required: bool,
}

/// The type of a field, which decides the rule it is checked by and its wire form.
/// See the "Types and their rules" table of unified-schema.md.
#[derive(Debug, Clone, Copy)]
pub enum FieldKind {
    /// An identifier: 1..64 chars, no control chars, trimmed.
    Code,
    /// Free text: valid UTF-8, no NUL, trimmed, at most `max_chars` characters.
    Text { max_chars: usize },
    /// A calendar year, 1949 ..= current year + 1; sent as a JSON integer.
    Year,
    /// A calendar date, 1949-10-01 ..= today + 1 year; sent as `YYYY-MM-DD`.
    Date,
    /// Yuan, ≥ 0, ≤ 999999999999.99, at most 2 decimals; sent as a string with 2 decimals.
    Amount,
    /// An administrative division code (GB/T 2260, 12 digits with the statistical
    /// township/village part): 6 or 12 digits, or exactly 12 when `twelve_digits`.
    Region { twelve_digits: bool },
    /// Unified social credit code (GB 32100-2015).
    Uscc,
    /// Resident identity card number (GB 11643-1999).
    Idcard,
    /// A bank or one-card account number: 8..32 digits.
    Account,
    /// One of a fixed set of values, given by wire value or Chinese label.
    Enum(&'static [EnumValue]),
    /// `functional_subject` (功能分类科目): digits, length 3, 5 or 7.
    SubjectCode,
    /// A payment period: `YYYY` or `YYYY-MM`.
    Period,
    /// A list of `{sha256, file_name, media_type, size}` describing attached files, which
    /// travel as separate content-addressed messages.
    Attachments,
}

/// One accepted value of an [`FieldKind::Enum`] field.
#[derive(Debug)]
pub struct EnumValue {
    /// Sent on the wire.
    pub wire: &'static str,
    /// The Chinese label, also accepted as input.
    pub label: &'static str,
}

/// The text limit when unified-schema.md states none.
pub const DEFAULT_TEXT_MAX_CHARS: usize = 2000;

// ---------------------------------------------------------------------------------------------
// Field tables. Kinds the document leaves unstated are inferred from the field's nature:
// codes and voucher numbers are `Code`, names, descriptions and document numbers (文号) are
// `Text`, dates (`*_date`) are `Date`, money is `Amount`.
// ---------------------------------------------------------------------------------------------

const fn req(name: &'static str, label: &'static str, kind: FieldKind) -> FieldDef {
    FieldDef {
        name,
        label,
        kind,
        required: true,
    }
}

const fn opt(name: &'static str, label: &'static str, kind: FieldKind) -> FieldDef {
    FieldDef {
        name,
        label,
        kind,
        required: false,
    }
}

const TEXT: FieldKind = FieldKind::Text {
    max_chars: DEFAULT_TEXT_MAX_CHARS,
};
/// project_name is limited to 200 chars (stated for fund_project; applied to the same field
/// of project_publicity too, so one project's name is valid in both forms).
const PROJECT_NAME: FieldKind = FieldKind::Text { max_chars: 200 };
const REGION: FieldKind = FieldKind::Region {
    twelve_digits: false,
};
const REGION12: FieldKind = FieldKind::Region {
    twelve_digits: true,
};

// The document gives no Chinese labels for these two enums; the labels below are ours.
static DISCLOSURE: &[EnumValue] = &[
    EnumValue {
        wire: "public",
        label: "公开",
    },
    EnumValue {
        wire: "restricted",
        label: "不公开",
    },
];

static FUND_LEVEL: &[EnumValue] = &[
    EnumValue {
        wire: "central",
        label: "中央",
    },
    EnumValue {
        wire: "provincial",
        label: "省级",
    },
    EnumValue {
        wire: "municipal",
        label: "市级",
    },
    EnumValue {
        wire: "county",
        label: "县级",
    },
    EnumValue {
        wire: "township",
        label: "乡镇",
    },
];

// Labels not given by the document; chosen to match the usual wording of 项目公示.
static PUBLICITY_STATUS: &[EnumValue] = &[
    EnumValue {
        wire: "planned",
        label: "未开工",
    },
    EnumValue {
        wire: "in_progress",
        label: "在建",
    },
    EnumValue {
        wire: "completed",
        label: "已完工",
    },
    EnumValue {
        wire: "accepted",
        label: "已验收",
    },
];

static DIRECTION: &[EnumValue] = &[
    EnumValue {
        wire: "income",
        label: "收入",
    },
    EnumValue {
        wire: "expense",
        label: "支出",
    },
];

static POVERTY_STATUS: &[EnumValue] = &[
    EnumValue {
        wire: "poor",
        label: "未脱贫",
    },
    EnumValue {
        wire: "lifted",
        label: "已脱贫",
    },
    EnumValue {
        wire: "relapsed",
        label: "返贫",
    },
];

static ASSESSMENT_RESULT: &[EnumValue] = &[
    EnumValue {
        wire: "excellent",
        label: "好",
    },
    EnumValue {
        wire: "good",
        label: "较好",
    },
    EnumValue {
        wire: "fair",
        label: "一般",
    },
    EnumValue {
        wire: "poor",
        label: "较差",
    },
];

use FieldKind::{
    Account, Amount, Attachments, Code, Date, Idcard, Period, SubjectCode, Uscc, Year,
};

static FUND_PROJECT: &[FieldDef] = &[
    req("project_code", "项目编码", Code),
    req("project_name", "项目名称", PROJECT_NAME),
    req("fiscal_year", "年度", Year),
    req("region_code", "行政区划", REGION),
    req("department_code", "主管部门代码", Uscc),
    req("fund_category", "资金类别", Code),
    opt("policy_basis", "政策依据", TEXT),
    opt("subsidy_standard", "补助标准", TEXT),
    req("total_amount", "资金总额", Amount),
    opt("beneficiary_scope", "补助对象范围", TEXT),
    req("disclosure", "公开范围", FieldKind::Enum(DISCLOSURE)),
];

static BUDGET_SOURCE: &[FieldDef] = &[
    req("indicator_code", "指标编码", Code),
    req("project_code", "项目编码", Code),
    req("fiscal_year", "年度", Year),
    req("fund_level", "资金级次", FieldKind::Enum(FUND_LEVEL)),
    req("document_no", "指标文号", TEXT),
    req("amount", "金额", Amount),
    req("received_date", "到达日期", Date),
    opt("functional_subject", "功能分类科目", SubjectCode),
];

static BUDGET_ALLOCATION: &[FieldDef] = &[
    req("allocation_code", "下达编码", Code),
    req("indicator_code", "来源指标编码", Code),
    req("project_code", "项目编码", Code),
    req("recipient_name", "用款单位", TEXT),
    opt("recipient_code", "用款单位代码", Uscc),
    opt("recipient_region", "用款单位区划", REGION),
    req("amount", "金额", Amount),
    req("issued_date", "下达日期", Date),
    opt("document_no", "下达文号", TEXT),
];

static FUND_DISBURSEMENT: &[FieldDef] = &[
    req("disbursement_code", "拨付编码", Code),
    req("project_code", "项目编码", Code),
    req("payee_name", "收款人", TEXT),
    opt("payee_account", "收款账号", Account),
    req("amount", "金额", Amount),
    req("paid_date", "拨付日期", Date),
    req("voucher_no", "凭证号", Code),
    opt("purpose", "用途", TEXT),
];

static INDIVIDUAL_SUBSIDY: &[FieldDef] = &[
    req("payment_code", "发放编码", Code),
    req("project_code", "项目编码", Code),
    req("recipient_name", "姓名", TEXT),
    req("id_number", "身份证号", Idcard),
    req("region_code", "所在村（社区）区划", REGION12),
    opt("bank_account", "一卡通账号", Account),
    req("amount", "发放金额", Amount),
    req("paid_date", "发放日期", Date),
    opt("period", "发放期间", Period),
    opt("subsidy_standard", "补助标准", TEXT),
];

static PROJECT_PUBLICITY: &[FieldDef] = &[
    req("project_code", "项目编码", Code),
    req("project_name", "项目名称", PROJECT_NAME),
    req("region_code", "区划", REGION),
    opt("location", "建设地点", TEXT),
    req("construction_unit", "实施单位", TEXT),
    req("contents", "建设内容", TEXT),
    req("budget_amount", "预算金额", Amount),
    opt("start_date", "开工日期", Date),
    opt("end_date", "竣工日期", Date),
    req("status", "状态", FieldKind::Enum(PUBLICITY_STATUS)),
    opt("acceptance_date", "验收日期", Date),
];

static PROJECT_EXPENDITURE: &[FieldDef] = &[
    req("expenditure_code", "支出编码", Code),
    req("project_code", "项目编码", Code),
    req("item", "支出事项", TEXT),
    req("amount", "金额", Amount),
    req("paid_date", "支付日期", Date),
    req("payee_name", "收款人", TEXT),
    req("voucher_no", "凭证号", Code),
];

static VILLAGE_FINANCE: &[FieldDef] = &[
    req("entry_code", "记账编码", Code),
    req("village_code", "村区划", REGION12),
    req("fiscal_year", "年度", Year),
    req("voucher_no", "凭证号", Code),
    req("entry_date", "记账日期", Date),
    req("direction", "收支", FieldKind::Enum(DIRECTION)),
    req("subject_code", "会计科目", Code),
    req("summary", "摘要", TEXT),
    req("amount", "金额", Amount),
    opt("counterparty", "对方单位", TEXT),
    opt("attachments", "凭证附件", Attachments),
];

static POVERTY_TARGET: &[FieldDef] = &[
    req("household_code", "户编号", Code),
    req("member_name", "姓名", TEXT),
    req("id_number", "身份证号", Idcard),
    req("region_code", "区划", REGION12),
    req("status", "状态", FieldKind::Enum(POVERTY_STATUS)),
    req("identified_year", "识别年度", Year),
    opt("lifted_year", "脱贫年度", Year),
];

static POVERTY_ASSESSMENT: &[FieldDef] = &[
    req("unit_name", "被考核单位", TEXT),
    opt("unit_code", "单位代码", Uscc),
    req("year", "年度", Year),
    req("result", "考核结果", FieldKind::Enum(ASSESSMENT_RESULT)),
    opt("application", "结果运用", TEXT),
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// (type, field count, required fields) transcribed by hand from unified-schema.md.
    const EXPECTED: &[(&str, usize, &[&str])] = &[
        (
            "fund_project",
            11,
            &[
                "project_code",
                "project_name",
                "fiscal_year",
                "region_code",
                "department_code",
                "fund_category",
                "total_amount",
                "disclosure",
            ],
        ),
        (
            "budget_source",
            8,
            &[
                "indicator_code",
                "project_code",
                "fiscal_year",
                "fund_level",
                "document_no",
                "amount",
                "received_date",
            ],
        ),
        (
            "budget_allocation",
            9,
            &[
                "allocation_code",
                "indicator_code",
                "project_code",
                "recipient_name",
                "amount",
                "issued_date",
            ],
        ),
        (
            "fund_disbursement",
            8,
            &[
                "disbursement_code",
                "project_code",
                "payee_name",
                "amount",
                "paid_date",
                "voucher_no",
            ],
        ),
        (
            "individual_subsidy",
            10,
            &[
                "payment_code",
                "project_code",
                "recipient_name",
                "id_number",
                "region_code",
                "amount",
                "paid_date",
            ],
        ),
        (
            "project_publicity",
            11,
            &[
                "project_code",
                "project_name",
                "region_code",
                "construction_unit",
                "contents",
                "budget_amount",
                "status",
            ],
        ),
        (
            "project_expenditure",
            7,
            &[
                "expenditure_code",
                "project_code",
                "item",
                "amount",
                "paid_date",
                "payee_name",
                "voucher_no",
            ],
        ),
        (
            "village_finance",
            11,
            &[
                "entry_code",
                "village_code",
                "fiscal_year",
                "voucher_no",
                "entry_date",
                "direction",
                "subject_code",
                "summary",
                "amount",
            ],
        ),
        (
            "poverty_target",
            7,
            &[
                "household_code",
                "member_name",
                "id_number",
                "region_code",
                "status",
                "identified_year",
            ],
        ),
        ("poverty_assessment", 5, &["unit_name", "year", "result"]),
    ];

    #[test]
    fn field_lists_match_the_document() {
        assert_eq!(EXPECTED.len(), RecordType::ALL.len());
        for (rt, (name, count, required)) in RecordType::ALL.into_iter().zip(EXPECTED) {
            assert_eq!(rt.as_str(), *name);
            assert_eq!(rt.fields().len(), *count, "{rt}: field count");
            let got: Vec<&str> = rt
                .fields()
                .iter()
                .filter(|f| f.required)
                .map(|f| f.name)
                .collect();
            assert_eq!(got, *required, "{rt}: required fields (in order)");
        }
    }

    #[test]
    fn field_names_are_unique_and_labels_present() {
        for rt in RecordType::ALL {
            let mut seen = HashSet::new();
            for f in rt.fields() {
                assert!(seen.insert(f.name), "{rt}: duplicate field {}", f.name);
                assert!(!f.label.is_empty(), "{rt}.{}: no label", f.name);
                assert!(std::ptr::eq(rt.field(f.name).unwrap(), f));
            }
            assert!(rt.field("no_such_field").is_none());
        }
    }

    #[test]
    fn kinds_stated_by_the_document() {
        use RecordType::*;
        // (type, field, expected kind) for every field whose kind the document states or the
        // brief prescribes beyond the obvious.
        let cases: &[(RecordType, &str, &str)] = &[
            (FundProject, "project_name", "Text { max_chars: 200 }"),
            (ProjectPublicity, "project_name", "Text { max_chars: 200 }"),
            (FundProject, "department_code", "Uscc"),
            (
                FundProject,
                "region_code",
                "Region { twelve_digits: false }",
            ),
            (BudgetSource, "document_no", "Text { max_chars: 2000 }"),
            (BudgetSource, "functional_subject", "SubjectCode"),
            (
                BudgetAllocation,
                "recipient_region",
                "Region { twelve_digits: false }",
            ),
            (FundDisbursement, "payee_account", "Account"),
            (FundDisbursement, "voucher_no", "Code"),
            (IndividualSubsidy, "id_number", "Idcard"),
            (
                IndividualSubsidy,
                "region_code",
                "Region { twelve_digits: true }",
            ),
            (IndividualSubsidy, "period", "Period"),
            (
                VillageFinance,
                "village_code",
                "Region { twelve_digits: true }",
            ),
            (VillageFinance, "subject_code", "Code"),
            (VillageFinance, "attachments", "Attachments"),
            (
                PovertyTarget,
                "region_code",
                "Region { twelve_digits: true }",
            ),
            (PovertyTarget, "lifted_year", "Year"),
            (PovertyAssessment, "unit_code", "Uscc"),
        ];
        for (rt, field, kind) in cases {
            let def = rt.field(field).unwrap();
            assert_eq!(format!("{:?}", def.kind), *kind, "{rt}.{field}");
        }
    }

    #[test]
    fn names_round_trip_and_unknown_lists_valid_names() {
        for rt in RecordType::ALL {
            assert_eq!(rt.as_str().parse::<RecordType>().unwrap(), rt);
            assert_eq!(rt.to_string(), rt.as_str());
            assert!(!rt.label().is_empty());
        }
        let err = "individual_subsidies".parse::<RecordType>().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("\"individual_subsidies\""), "{msg}");
        for rt in RecordType::ALL {
            assert!(msg.contains(rt.as_str()), "{msg}");
        }
        assert_eq!(RecordType::IndividualSubsidy.label(), "个人补助资金发放表");
    }

    #[test]
    fn only_poverty_target_is_restricted() {
        let restricted: Vec<_> = RecordType::ALL
            .into_iter()
            .filter(|rt| rt.restricted())
            .collect();
        assert_eq!(restricted, [RecordType::PovertyTarget]);
    }

    #[test]
    fn enum_wires_and_labels_are_unique() {
        for rt in RecordType::ALL {
            for f in rt.fields() {
                if let FieldKind::Enum(values) = f.kind {
                    let wires: HashSet<_> = values.iter().map(|v| v.wire).collect();
                    let labels: HashSet<_> = values.iter().map(|v| v.label).collect();
                    assert_eq!(wires.len(), values.len());
                    assert_eq!(labels.len(), values.len());
                    // A label equal to another value's wire name would make input ambiguous.
                    assert!(wires.is_disjoint(&labels));
                }
            }
        }
    }
}
